"""vLLM's engine inside our Triton model: SmolLM2 on `engine: vllm` (model_repository_vllm/)
through tritonserver and the gateway, with the vLLM virtualenv's Python running the model.

Runs where the vLLM virtualenv exists (`make vllm-install`; `.ci/run` makes it), else skips.
The first start compiles the model (about a minute here), later ones reuse vLLM's cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from .metrics import disconnect_mid_stream, model_metric
from .servers import TritonProcess, launch_gateway, launch_triton, openai_client

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("TRITONCHAT_VLLM_VENV", ROOT / ".venv-vllm"))
MODEL = "smollm2-135m-instruct-vllm"
QUESTION = "What is the capital of France? Answer in one word."
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "age": {"type": "integer", "minimum": 18, "maximum": 99}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
    "required": ["city"], "additionalProperties": False}}}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (VLLM_VENV / "bin" / "python3").exists(),
                       reason=f"no vLLM virtualenv at {VLLM_VENV} (make vllm-install)"),
]


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[TritonProcess, str]]:
    with launch_triton(ROOT / "model_repository_vllm", python_env=VLLM_VENV, ready_timeout_s=900) as triton, \
            launch_gateway([triton.grpc_url]) as gateway:
        yield triton, gateway


@pytest.fixture(scope="module")
def client(stack: tuple[TritonProcess, str]) -> openai.OpenAI:
    return openai_client(stack[1])


def test_models_list_the_vllm_engine(stack: tuple[TritonProcess, str], client: openai.OpenAI) -> None:
    models = httpx.get(f"{stack[1]}/v1/models", timeout=10).json()["data"]
    assert {(m["id"], m["engine"]) for m in models} == {(MODEL, "vllm"), ("smollm2-vllm", "vllm")}
    assert model_metric(stack[0], MODEL, "chatllm_engine_info", engine="vllm") == 1


def test_streaming_greedy_answer_is_paris(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=20, stream=True,
        stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, "the answer arrives in several chunks"
    assert "Paris" in "".join(pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len(pieces)


def test_stop_strings_end_the_answer_before_them(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20)
    text = full.choices[0].message.content or ""
    assert "Paris" in text
    cut = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20,
                                         stop=["Paris"])
    assert cut.choices[0].message.content == text[:text.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs_of_a_greedy_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                           temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 2 and token.top_logprobs[0].token == token.token
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-4) and token.logprob <= 0


def test_two_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a sentence about the sea."}], n=2,
        temperature=1.0, seed=3, max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)


def test_client_disconnect_frees_the_sequence(stack: tuple[TritonProcess, str]) -> None:
    triton, gateway = stack
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 4000, "temperature": 0, "stream": True, "ignore_eos": True}
    # 4000 tokens would take minutes; after the disconnect vLLM must drop the sequence.
    disconnect_mid_stream(triton, gateway, "/v1/chat/completions", body, "vLLM to drop the cancelled sequence",
                          timeout_s=30)
    reply = httpx.post(f"{gateway}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 4})
    assert reply.status_code == 200


def test_a_json_schema_answer_validates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PERSON)


def test_a_choice_answer_is_one_of_the_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky green?"}], temperature=0, max_tokens=16,
        extra_body={"structured_outputs": {"choice": ["absolutely yes", "certainly not"]}})
    assert reply.choices[0].message.content in ("absolutely yes", "certainly not")
    assert reply.choices[0].finish_reason == "stop", "the choice is complete, and nothing follows it"


def test_a_named_tool_gets_arguments_of_its_schema(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Berlin?"}], temperature=0,
        max_tokens=40, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = (reply.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[union-attr]


def test_a_grammar_vllm_cannot_compile_is_a_400(stack: tuple[TritonProcess, str]) -> None:
    reply = httpx.post(f"{stack[1]}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": "Count:", "max_tokens": 4, "guided_grammar": "root ::= missing_rule"})
    assert reply.status_code == 400, reply.text
    assert "vLLM refused" in reply.json()["error"]["message"]
