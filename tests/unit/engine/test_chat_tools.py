"""chat.py: conversations with tools through a template that knows tools and one that does not."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import PreTrainedTokenizerBase

from chatllm_engine.chat import render_chat, template_knows_tools
from chatllm_engine.errors import InvalidRequest

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
HISTORY = (
    {"role": "user", "content": "weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "-3 C", "tool_call_id": "c1"},
    {"role": "tool", "content": "windy", "tool_call_id": "c1"},
)


def test_a_template_without_tools_gets_the_default_hermes_prompt(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    assert not template_knows_tools(tiny_tokenizer)

    text = render_chat(tiny_tokenizer, HISTORY, (TOOL,))

    assert text.startswith("<|im_start|>system\n") and "<tools>" in text
    assert json.dumps(TOOL["function"]) in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n-3 C\n</tool_response>\n<tool_response>\nwindy" in text
    assert "<|im_start|>tool" not in text, "tool results become user turns the template knows"
    assert text.endswith("<|im_start|>assistant\n")


def test_the_llama3_parser_gets_its_own_prompt_and_history(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    text = render_chat(tiny_tokenizer, ({"role": "system", "content": "Be brief."}, *HISTORY), (TOOL,),
                       tool_call_parser="llama3_json")

    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou have access to the following functions")
    assert '{"name": "get_weather", "parameters": {"city": "Oslo"}}' in text


def test_a_template_that_knows_tools_gets_them_and_object_arguments(
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t['function']['name'] }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}"
        "CALL {{ c['function']['name'] }} {{ c['function']['arguments']['city'] }}"
        "{% endfor %}\n{% endfor %}{% if flag %}FLAG{% endif %}")

    text = render_chat(tokenizer, HISTORY, (TOOL,), {"flag": True})

    assert text.startswith("TOOLS:get_weather;")
    assert "CALL get_weather Oslo" in text and "tool:-3 C" in text and text.endswith("FLAG")


def test_template_kwargs_may_not_replace_what_the_engine_sets(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(InvalidRequest, match="tools"):
        render_chat(tiny_tokenizer, HISTORY[:1], None, {"tools": []})
