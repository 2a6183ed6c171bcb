"""Structured outputs and tools on the real model (SmolLM2-135M), through Triton and the gateway.

A 135M model rarely writes valid JSON unaided: every valid answer here is the engine's
grammar at work. Few, short requests (the CPU is shared); the wide sweep over seeds is
scripts/probes/structured_outputs.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from .servers import TritonProcess

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 2},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                    "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}


def test_json_schema_holds_streaming_with_two_sampled_choices(default_client: openai.OpenAI) -> None:
    stream = default_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], n=2, seed=3, temperature=1.0,
        max_tokens=120, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    texts, reasons = ["", ""], [None, None]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]

    assert reasons == ["stop", "stop"]
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


def test_regex_and_choice_match(default_client: openai.OpenAI) -> None:
    regex = default_client.completions.create(
        model=MODEL, prompt="The date today is", max_tokens=20, temperature=0.8, seed=1,
        extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-[01][0-9]"}})
    choice = default_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky green?"}], max_tokens=10, temperature=0,
        extra_body={"guided_choice": ["yes", "no"]})

    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]", regex.choices[0].text)
    assert choice.choices[0].message.content in ("yes", "no")


def test_a_tool_round_trip_with_a_required_call(default_client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Berlin?"}]
    first = default_client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                                   tool_choice="required", parallel_tool_calls=False, temperature=0,
                                                   max_tokens=60)

    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls or []
    assert calls and all(c.function.name == "get_weather" for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    messages += [first.choices[0].message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "12 degrees, light rain"} for c in calls]
    answer = default_client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0,
                                                    max_tokens=24)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_what_only_the_engine_can_refuse_is_a_400_and_the_server_stays_up(
        default_stack: tuple[TritonProcess, str], default_client: openai.OpenAI) -> None:
    for extra in ({"guided_grammar": "root ::= undefined_rule"}, {"guided_regex": "(?<=a)b"},
                  {"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}):
        response = httpx.post(f"{default_stack[1]}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert "does not compile" in response.json()["error"]["message"]
    reply = default_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=4)
    assert reply.choices[0].finish_reason == "length"


def test_a_chinese_stream_cut_mid_character_ends_cleanly(default_client: openai.OpenAI) -> None:
    for max_tokens in (24, 25):
        chunks = list(default_client.completions.create(
            model=MODEL, prompt="你好，世界！今天天气很好，我们去公园散步吧。", max_tokens=max_tokens, temperature=0,
            stream=True))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert "\ufffd" not in text, (max_tokens, text)
