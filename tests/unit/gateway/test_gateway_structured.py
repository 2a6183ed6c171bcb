"""Structured outputs and tools through the app with a fake client: what reaches the backend,
how answers become tool calls, and the 400s."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chatllm_wire import StructuredOutput
from gateway.llm_client import ModelCard
from tests.unit.gateway.fakes import FakeLLMClient, chunk, sse_events, words_script
from tests.unit.gateway.test_gateway_errors import assert_openai_error

CHAT = "/v1/chat/completions"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


def chat(**extra: object) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra}


def script(*pieces: str, finish: str = "stop") -> list[Any]:
    return [chunk(p, finish if i == len(pieces) - 1 else None, 3 if i == 0 else None)
            for i, p in enumerate(pieces)]


@pytest.mark.parametrize(("extra", "expected"), [
    ({"response_format": {"type": "json_object"}}, StructuredOutput("json_object")),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}},
     StructuredOutput("json", json.dumps(SCHEMA, separators=(",", ":")))),
    ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredOutput("regex", "[0-9]+")),
    ({"structured_outputs": {"choice": ["a", "b"]}}, StructuredOutput("choice", '["a", "b"]')),
    ({"guided_json": json.dumps(SCHEMA)}, StructuredOutput("json", json.dumps(SCHEMA, separators=(",", ":")))),
    ({"guided_regex": "a|b"}, StructuredOutput("regex", "a|b")),
    ({"guided_choice": ["x"]}, StructuredOutput("choice", '["x"]')),
    ({"guided_grammar": 'root ::= "a"'}, StructuredOutput("grammar", 'root ::= "a"')),
    ({"response_format": {"type": "text"}}, None),
])
def test_every_spelling_reaches_the_backend_as_one_constraint(
        client: TestClient, fake: FakeLLMClient, extra: dict[str, object], expected: StructuredOutput | None) -> None:
    response = client.post(CHAT, json=chat(**extra))

    assert response.status_code == 200, response.text
    assert fake.inputs[0].sampling.structured_outputs == expected


def test_completions_take_structured_outputs_too(client: TestClient, fake: FakeLLMClient) -> None:
    response = client.post("/v1/completions", json={"model": "echo", "prompt": "x", "guided_choice": ["a"]})

    assert response.status_code == 200, response.text
    assert fake.inputs[0].sampling.structured_outputs == StructuredOutput("choice", '["a"]')


MALFORMED: list[tuple[dict[str, object], str]] = [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"required": "city"}}}},
     "response_format"),
    ({"structured_outputs": {"json": {"type": "string", "minLength": 3, "maxLength": 1}}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "   "}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": 'start ::= "a"'}}, "structured_outputs"),
    ({"structured_outputs": {"yaml": "a: 1"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_json": {"type": "object", "properties": {"a": {"pattern": "("}}}}, "guided_json"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_choice": ["ok", ""]}, "guided_choice"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required", "guided_choice": ["a"]}, "tool_choice"),
]


@pytest.mark.parametrize(("extra", "param"), MALFORMED)
def test_malformed_constraints_and_tool_choices_are_400_before_any_generation(
        client: TestClient, fake: FakeLLMClient, extra: dict[str, object], param: str) -> None:
    response = client.post(CHAT, json=chat(**extra))

    assert response.status_code == 400, response.text
    assert assert_openai_error(response.json())["param"] == param
    assert fake.inputs == []


def test_named_tool_choice_constrains_to_the_parameters_and_answers_a_tool_call(
        client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script('{"city": ', '"Paris"}'))

    response = client.post(CHAT, json=chat(tools=[WEATHER, TIME],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}}))

    assert response.status_code == 200, response.text
    inp = fake.inputs[0]
    assert inp.sampling.structured_outputs == StructuredOutput("json", json.dumps(SCHEMA, separators=(",", ":")))
    assert inp.tools is not None and [t["function"]["name"] for t in inp.tools] == ["get_weather", "get_time"]
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_required_tool_choice_asks_for_an_array_of_calls(client: TestClient, fake: FakeLLMClient) -> None:
    answer = ('[{"name": "get_time", "arguments": {"zone": "UTC"}}, '
              '{"name": "get_weather", "arguments": {"city": "Rome"}}]')
    fake.queue(script(answer))

    response = client.post(CHAT, json=chat(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False))

    schema = json.loads(fake.inputs[0].sampling.structured_outputs.value)  # type: ignore[union-attr]
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    branches = schema["items"]["anyOf"]
    assert [b["properties"]["name"]["enum"] for b in branches] == [["get_weather"], ["get_time"]]
    assert branches[0]["properties"]["arguments"] == SCHEMA
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"]["tool_calls"]]
    assert calls == [("get_time", {"zone": "UTC"}), ("get_weather", {"city": "Rome"})]


def test_auto_parses_hermes_tool_calls_and_keeps_the_text_before_them(
        client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script('Let me check. <tool_call>\n{"name": "get_weather", '
                      '"arguments": {"city": "Oslo"}}\n</tool_call>'),
               script("No tool needed."),
               script('<tool_call>{"name": "unknown_tool", "arguments": {}}</tool_call>'))

    called, plain, unknown = (client.post(CHAT, json=chat(tools=[WEATHER])).json()["choices"][0] for _ in range(3))

    assert fake.inputs[0].sampling.structured_outputs is None, "auto is parsed, not constrained"
    assert called["finish_reason"] == "tool_calls"
    assert called["message"]["content"] == "Let me check."
    assert called["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert plain["finish_reason"] == "stop" and plain["message"] == {"role": "assistant", "content": "No tool needed."}
    assert "tool_calls" not in unknown["message"], "a call of a tool that was not offered stays text"


def test_auto_with_the_llama3_json_parser(make_client: Any, fake: FakeLLMClient) -> None:
    fake.models = [ModelCard("llama", "llama", 256, tool_call_parser="llama3_json")]
    client = make_client()
    fake.queue(script('{"name": "get_weather", "parameters": {"city": "Lima"}}; '
                      '{"name": "get_time", "parameters": {"zone": "CET"}}'))

    choice = client.post(CHAT, json={**chat(tools=[WEATHER, TIME]), "model": "llama"}).json()["choices"][0]

    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather", "get_time"]


def test_tool_choice_none_hides_the_tools(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'))

    choice = client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="none")).json()["choices"][0]

    assert fake.inputs[0].tools is None
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]


def test_history_with_tool_calls_and_results_reaches_the_template(client: TestClient, fake: FakeLLMClient) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [{"role": "user", "content": "weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"}]

    response = client.post(CHAT, json=chat(messages=messages, tools=[WEATHER], chat_template_kwargs={"x": 1}))

    assert response.status_code == 200, response.text
    inp = fake.inputs[0]
    assert inp.messages is not None
    assert inp.messages[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert inp.messages[2] == {"role": "tool", "content": "-3 C", "tool_call_id": "call_1"}
    assert inp.chat_template_kwargs == {"x": 1}


def tool_deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [d for e in events if isinstance(e, dict) and e["choices"]
            for d in e["choices"][0]["delta"].get("tool_calls", [])]


def test_streamed_named_call_sends_id_and_name_once_then_argument_pieces(
        client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script('{"city"', ': "Paris"', "}"))

    events = sse_events(client.post(CHAT, json=chat(stream=True, tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_weather"}})).text)

    deltas = tool_deltas(events)
    assert deltas[0]["id"].startswith("call_") and deltas[0]["type"] == "function"
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in deltas[1:])
    assert "".join(d["function"].get("arguments", "") for d in deltas) == '{"city": "Paris"}'
    assert all(d["index"] == 0 for d in deltas)
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "stop"
    assert not any(e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"])
    assert events[-1] == "[DONE]"


def test_streamed_auto_streams_text_then_sends_whole_calls_with_finish_tool_calls(
        client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script("Sure", ". <tool", '_call>{"name": "get_weather", ',
                      '"arguments": {"city": "Nice"}}</tool_call>'),
               script("<to", "day is fine"))

    first = sse_events(client.post(CHAT, json=chat(stream=True, tools=[WEATHER])).text)
    second = sse_events(client.post(CHAT, json=chat(stream=True, tools=[WEATHER])).text)

    content = "".join(e["choices"][0]["delta"].get("content", "") for e in first[:-1] if e["choices"])
    assert content == "Sure. "
    (call,) = tool_deltas(first)
    assert call["index"] == 0 and call["function"] == {"name": "get_weather", "arguments": '{"city": "Nice"}'}
    assert [e["choices"][0]["finish_reason"] for e in first[:-1] if e["choices"]][-1] == "tool_calls"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in second[:-1] if e["choices"]) == \
        "<today is fine"
    assert not tool_deltas(second)


def test_n_choices_each_get_their_own_tool_calls(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script('{"city": "A"}'), script('{"city": "B"}'))

    body = client.post(CHAT, json=chat(n=2, tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_weather"}})).json()

    args = [c["message"]["tool_calls"][0]["function"]["arguments"] for c in body["choices"]]
    assert args == ['{"city": "A"}', '{"city": "B"}']
    ids = {c["message"]["tool_calls"][0]["id"] for c in body["choices"]}
    assert len(ids) == 2


def test_a_cut_short_required_answer_keeps_its_complete_calls(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(script('[{"name": "get_weather", "argu', finish="length"),
               script('[{"name": "get_weather", "arguments": {"city": "A"}}, {"name": "get_weather", "argu',
                      finish="length"))

    nothing = client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="required")).json()["choices"][0]
    one = client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="required")).json()["choices"][0]

    assert nothing["finish_reason"] == "length"
    assert nothing["message"]["content"] == '[{"name": "get_weather", "argu'
    assert one["finish_reason"] == "tool_calls"
    assert [c["function"]["arguments"] for c in one["message"]["tool_calls"]] == ['{"city": "A"}']


def test_backend_compile_errors_are_400(client: TestClient, fake: FakeLLMClient) -> None:
    from gateway.errors import upstream_error

    fake.queue([upstream_error("[INVALID_ARG] the grammar does not compile: undefined rule")])

    response = client.post(CHAT, json=chat(guided_grammar="root ::= nothing"))

    assert response.status_code == 400
    assert "does not compile" in assert_openai_error(response.json())["message"]
    fake.queue(words_script("still here"))
    assert client.post(CHAT, json=chat()).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_think_sections_become_reasoning_content(make_client: Any, fake: FakeLLMClient, stream: bool) -> None:
    fake.models = [ModelCard("thinker", "thinker", 256, reasoning_parser="think")]
    client = make_client()
    fake.queue(script("<th", "ink>Paris is in ", "France.</thi", "nk>\n\nThe answer: Paris."), script("Just text."))

    def reply() -> tuple[str, str]:
        body = {"model": "thinker", "messages": [{"role": "user", "content": "?"}], "stream": stream,
                "chat_template_kwargs": {"enable_thinking": True}}
        response = client.post(CHAT, json=body)
        if not stream:
            message = response.json()["choices"][0]["message"]
            return message.get("reasoning_content") or "", message["content"]
        deltas = [e["choices"][0]["delta"] for e in sse_events(response.text)[:-1] if e["choices"]]
        return ("".join(d.get("reasoning_content", "") for d in deltas),
                "".join(d.get("content", "") for d in deltas))

    assert reply() == ("Paris is in France.", "The answer: Paris.")
    assert reply() == ("", "Just text.")
    assert fake.inputs[0].chat_template_kwargs == {"enable_thinking": True}


def test_reasoning_stream_holds_an_unfinished_section() -> None:
    from gateway.reasoning import ReasoningStream, split_reasoning

    stream = ReasoningStream()
    assert stream.feed("  <think>a") == ("a", "")
    assert stream.feed("b</") == ("b", "")
    assert stream.finish() == ("</", "")
    assert split_reasoning("<think>cut off") == ("cut off", "")
    assert split_reasoning("no <think> here") == (None, "no <think> here")
