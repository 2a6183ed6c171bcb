"""chatllm_wire: the one definition of what crosses gRPC, tested without Triton."""

from __future__ import annotations

import json
import math

import pytest

import chatllm_wire as wire


def test_unset_parameters_round_trip_to_an_empty_object() -> None:
    assert wire.parse_sampling(None) == wire.WireSampling()
    assert wire.parse_sampling("") == wire.WireSampling()
    assert json.loads(wire.WireSampling().to_json()) == {}
    assert json.loads(wire.WireSampling(ignore_eos=False).to_json()) == {}


def test_every_key_round_trips_through_the_tensor_json() -> None:
    full = wire.WireSampling(
        max_tokens=5, temperature=0.5, top_p=0.9, top_k=4, repetition_penalty=1.1, presence_penalty=0.2,
        frequency_penalty=-0.3, seed=7, ignore_eos=True, min_tokens=1, logprobs=3, stop=("a", "b"),
        stop_token_ids=(2, 9), structured_outputs=wire.structured_output("regex", "[0-9]+"))
    raw = json.loads(full.to_json())
    assert set(raw) == wire.SAMPLING_KEYS
    assert wire.parse_sampling(full.to_json()) == full


@pytest.mark.parametrize(("values", "param"), [
    ({"temperature": 2.01}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"logprobs": wire.MAX_LOGPROBS + 1}, "logprobs"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": 2**64}, "seed"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"stop": [1]}, "stop"),
    ({"stop": ["x"] * (wire.MAX_STOP_STRINGS + 1)}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"best_of": 2}, "best_of"),
    ({"structured_outputs": {"json": 5}}, "structured_outputs"),
])
def test_bad_values_name_their_key(values: dict[str, object], param: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.check_sampling(values)
    assert caught.value.param == param
    assert caught.value.code == "INVALID_ARG"


def test_limits_are_inclusive_where_openai_says_so() -> None:
    parsed = wire.check_sampling({"temperature": 2, "top_p": 1, "logprobs": wire.MAX_LOGPROBS, "max_tokens": 3.0,
                                  "seed": -(2**63)})
    assert (parsed.temperature, parsed.top_p, parsed.logprobs, parsed.max_tokens) == (2.0, 1.0, 20, 3)
    assert isinstance(parsed.max_tokens, int)


def test_the_tensor_must_be_a_json_object() -> None:
    for text in ("{", "[1]", "3"):
        with pytest.raises(wire.WireError, match="sampling_parameters"):
            wire.parse_sampling(text)


@pytest.mark.parametrize(("stop", "expected"), [
    (None, ()), ("", ()), ("END", ("END",)), (["", "a", "", "b"], ("a", "b")), ([], ()),
])
def test_stop_strings_are_normalised_once(stop: object, expected: tuple[str, ...]) -> None:
    assert wire.normalize_stop(stop) == expected  # type: ignore[arg-type]
    assert wire.check_sampling({"stop": stop}).stop == expected


def test_structured_outputs_take_one_kind_in_normal_form() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    spec = wire.parse_structured_outputs({"json": json.dumps(schema)})
    assert spec == wire.StructuredOutput("json", json.dumps(schema, separators=(",", ":")))
    assert list(json.loads(spec.value)["properties"]) == ["b", "a"], "key order is the output's order"
    assert wire.parse_structured_outputs({"choice": ["x", "y"]}).choices() == ["x", "y"]  # type: ignore[union-attr]
    assert wire.parse_structured_outputs({"json_object": True}) == wire.StructuredOutput("json_object")
    assert wire.parse_structured_outputs({"regex": None, "grammar": 'root ::= "a"'}).kind == "grammar"  # type: ignore[union-attr]
    assert wire.parse_structured_outputs({}) is None
    for spec in (wire.structured_output("json", schema), wire.structured_output("choice", ["a"]),
                 wire.structured_output("regex", "a+"), wire.structured_output("json_object", True)):
        assert wire.parse_structured_outputs(spec.to_wire()) == spec


MALFORMED = [
    {"json": {"type": "strnig"}},
    {"json": {"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}}},
    {"json": {"type": "object", "required": "a"}},
    {"json": {"type": "string", "minLength": 5, "maxLength": 2}},
    {"json": {"type": "array", "items": 3}},
    {"json": {"enum": []}},
    {"json": {"type": "string", "pattern": "(unclosed"}},
    {"json": {"anyOf": []}},
    {"json": "{not json"},
    {"json": [1, 2]},
    {"regex": "[a-"},
    {"regex": ""},
    {"choice": []},
    {"choice": ["a", 1]},
    {"grammar": ""},
    {"grammar": 'start ::= "a"'},
    {"regex": "a", "choice": ["a"]},
    {"xml": "<a/>"},
    {"json_object": "yes"},
    "not an object",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_structured_outputs_are_invalid_args(raw: object) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.parse_structured_outputs(raw)
    assert caught.value.param == "structured_outputs"
    assert caught.value.message


def test_error_messages_carry_their_code_in_brackets() -> None:
    message = wire.error_message("INVALID_ARG", "bad [thing]")
    assert message == "[INVALID_ARG] bad [thing]"
    assert wire.split_error(message) == ("INVALID_ARG", "bad [thing]")
    assert wire.split_error("  plain text ") == (None, "plain text")


def test_logprobs_json_round_trips_with_the_sampled_token_first() -> None:
    positions = [
        [wire.WireLogprob(5, -2.0, 3, "c"), wire.WireLogprob(1, -0.5, 1, "a"), wire.WireLogprob(2, -1.0, 2, "b"),
         wire.WireLogprob(5, -2.0, 3, "c")],
        [wire.WireLogprob(7, float("-inf"), 9, "z")],
    ]
    payload = wire.logprobs_json(positions)
    assert json.loads(payload)[0] == {
        "5": {"logprob": -2.0, "rank": 3, "decoded_token": "c"},
        "1": {"logprob": -0.5, "rank": 1, "decoded_token": "a"},
        "2": {"logprob": -1.0, "rank": 2, "decoded_token": "b"},
    }
    parsed = wire.parse_logprobs(payload)
    assert [e.token_id for e in parsed[0]] == [5, 1, 2]
    assert parsed[1] == [wire.WireLogprob(7, wire.MIN_LOGPROB, 9, "z")]
    assert wire.parse_logprobs("") == []
    with pytest.raises(wire.WireError) as caught:
        wire.parse_logprobs('[{"1": {"rank": 1}}]')
    assert caught.value.code == "INTERNAL"


def test_messages_may_carry_tool_calls_and_tool_results() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]
    assert wire.check_messages(messages) == tuple(messages)
    for bad in ([], [{"content": "x"}], [{"role": "user", "content": 3}], [{"role": "assistant"}],
                [{"role": "assistant", "tool_calls": [{"function": {}}]}], "x"):
        with pytest.raises(wire.WireError):
            wire.check_messages(bad)


def test_tools_are_function_definitions_with_schema_parameters() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    assert wire.check_tools([tool]) == (tool,)
    for bad in ([{"type": "function"}], [{"type": "code", "function": {"name": "x"}}],
                [{"function": {"name": "has space"}}],
                [{"function": {"name": "x", "parameters": {"type": "objekt"}}}], {"a": 1}):
        with pytest.raises(wire.WireError):
            wire.check_tools(bad)
