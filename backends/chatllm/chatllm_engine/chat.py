"""Chat messages (with tools) to prompt text, through the model's own chat template.

Templates that know tools (they use the `tools` variable) get the messages and `tools=` as
transformers documents them (tool-call arguments as objects). Templates that do not get a
default tool prompt instead: a system message listing the tools and asking for Hermes-style
`<tool_call>` blocks (or Llama-3 JSON when the model's `tool_call_parser` is `llama3_json`),
earlier tool calls written out in that format and tool results as `<tool_response>` user
turns, so the conversation stays in roles every template accepts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from .errors import InvalidRequest
from .types import GenerationRequest


_HERMES_PROMPT = (
    "You may call one or more functions to help with the user's request. The functions, as JSON "
    "signatures:\n<tools>\n{tools}\n</tools>\n\nTo call a function, answer with a <tool_call> block "
    "per call, each holding a JSON object with the function's name and arguments:\n<tool_call>\n"
    '{{"name": "<function-name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>\n'
    "When no function is needed, answer normally."
)
_LLAMA3_PROMPT = (
    "You have access to the following functions. To call one, answer with only a JSON object "
    '{{"name": "<function-name>", "parameters": {{<arguments as JSON>}}}}.\nThe functions:\n{tools}\n'
    "When no function is needed, answer normally."
)


def template_knows_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    template = tokenizer.chat_template
    texts = template.values() if isinstance(template, dict) else [template or ""]
    return any("tools" in str(t) for t in texts)


def _arguments(call: dict[str, Any]) -> Any:
    raw = call.get("function", {}).get("arguments", {})
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return raw


def _for_template(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's message as HF templates expect it: tool-call arguments as objects."""
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {**c["function"], "arguments": _arguments(c)}} for c in message["tool_calls"]]
    return {**message, "tool_calls": calls, "content": message.get("content") or ""}


def default_tool_prompt(tools: Sequence[dict[str, Any]], parser: str) -> str:
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    template = _LLAMA3_PROMPT if parser == "llama3_json" else _HERMES_PROMPT
    return template.format(tools=listing)


def _written_call(call: dict[str, Any], parser: str) -> str:
    name = call.get("function", {}).get("name", "")
    if parser == "llama3_json":
        return json.dumps({"name": name, "parameters": _arguments(call)}, ensure_ascii=False)
    body = json.dumps({"name": name, "arguments": _arguments(call)}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def _plain_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                    parser: str) -> list[dict[str, str]]:
    """Messages in system/user/assistant roles only, tool calls and results written as text."""
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_written_call(c, parser) for c in message["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        if out and role == "user" and out[-1]["role"] == "user" and message["role"] == "tool":
            out[-1]["content"] += "\n" + content  # several results answer one turn
            continue
        out.append({"role": role, "content": content})
    if tools:
        prompt = default_tool_prompt(tools, parser)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]],
                tools: Sequence[dict[str, Any]] | None = None,
                template_kwargs: dict[str, Any] | None = None, tool_call_parser: str = "hermes") -> str:
    """The prompt text of a conversation; raises InvalidRequest when the template refuses it."""
    kwargs = dict(template_kwargs or {})
    for reserved in ("messages", "tools", "add_generation_prompt", "tokenize"):
        if reserved in kwargs:
            raise InvalidRequest(f"chat_template_kwargs may not set {reserved!r}")
    has_tool_turns = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    try:
        if template_knows_tools(tokenizer):
            return str(tokenizer.apply_chat_template(
                [_for_template(m) for m in messages], tools=list(tools) if tools else None,
                tokenize=False, add_generation_prompt=True, **kwargs))
        if tools or has_tool_turns:
            messages = _plain_messages(messages, tools, tool_call_parser)
        return str(tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True, **kwargs))
    except InvalidRequest:
        raise
    except Exception as exc:  # jinja raises for roles or shapes a template refuses
        raise InvalidRequest(f"the chat template rejected the messages: {exc}") from exc


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, request: GenerationRequest, tool_call_parser: str = "hermes",
                     special_tokens_in_chat: bool = False) -> list[int]:
    """A request's prompt as token ids, the same for every engine: given ids as they are,
    chat messages through the model's own template (with tools), a raw prompt as it is.

    `special_tokens_in_chat`: let the tokenizer add its special tokens to a rendered chat
    too (seq2seq models, whose templates leave the encoder's end marker to the tokenizer).
    """
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids)
    if request.messages is not None:
        if not request.messages:
            raise InvalidRequest("messages must not be empty")
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest("this model has no chat template (set the chat_template parameter)")
        text = render_chat(tokenizer, request.messages, request.tools, request.chat_template_kwargs, tool_call_parser)
        return list(tokenizer(text, add_special_tokens=special_tokens_in_chat).input_ids)
    if not request.prompt:
        raise InvalidRequest("the prompt is empty")
    return list(tokenizer(request.prompt).input_ids)


def eos_token_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every end-of-sequence id the model's generation config or its tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return frozenset(ids)


def check_prompt_ids(prompt_ids: list[int], vocab_size: int) -> list[int]:
    """`prompt_ids` when the model can read them; InvalidRequest for none or ids out of range."""
    if not prompt_ids:
        raise InvalidRequest("the prompt is empty")
    if not all(0 <= t < vocab_size for t in prompt_ids):
        raise InvalidRequest(f"prompt token ids must be in [0, {vocab_size})")
    return prompt_ids
