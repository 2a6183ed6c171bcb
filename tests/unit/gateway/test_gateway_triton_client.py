"""The Triton mapping without a server: configs, request tensors, response decoding."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.errors import UpstreamError
from gateway.llm_client import GenerationInput, SamplingParams, TokenLogprob, TopLogprob
from gateway.triton_client import (
    OUTPUTS,
    TritonModel,
    build_count_request,
    build_request,
    decode_response,
    parse_logprobs,
    parse_model_config,
)


def test_config_with_aliases_and_context_length() -> None:
    config = {
        "name": "llm",
        "max_batch_size": 8,
        "model_transaction_policy": {"decoupled": True},
        "parameters": {
            "served_model_names": {"string_value": "chat-a, chat-b,,llm"},
            "max_model_len": {"string_value": "2048"},
        },
    }

    model = parse_model_config("llm", config)

    assert model == TritonModel(
        "llm", True, ("chat-a", "chat-b", "llm"), 2048, "generate", 8, frozenset(), frozenset()
    )
    assert [(c.id, c.triton_model, c.context_length, c.kind) for c in model.cards()] == [
        ("llm", "llm", 2048, "generate"),
        ("chat-a", "llm", 2048, "generate"),
        ("chat-b", "llm", 2048, "generate"),
    ]


def test_a_chatllm_models_engine_comes_from_its_parameters() -> None:
    base = {"backend": "chatllm", "model_transaction_policy": {"decoupled": True}}
    on_vllm = {**base, "parameters": {"engine": {"string_value": "vllm"}}}

    assert [c.engine for c in parse_model_config("m", on_vllm).cards()] == ["vllm"]  # type: ignore[union-attr]
    assert parse_model_config("m", base).engine == "ours"  # type: ignore[union-attr]
    other = parse_model_config("m", {"model_transaction_policy": {"decoupled": True}})
    assert other is not None and other.engine is None


def test_config_without_parameters_is_the_model_name_only() -> None:
    model = parse_model_config("vllm_model", {"model_transaction_policy": {"decoupled": True}})

    assert model is not None
    assert not model.batched  # max_batch_size absent = 0
    assert [c.id for c in model.cards()] == ["vllm_model"]
    assert model.context_length is None


def test_non_decoupled_models_are_not_llms() -> None:
    assert parse_model_config("classifier", {"max_batch_size": 8}) is None


def test_embedding_model_config() -> None:
    config = {
        "max_batch_size": 32,
        "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [
            {"name": "embedding", "data_type": "TYPE_FP32", "dims": ["384"]},
            {"name": "num_input_tokens", "data_type": "TYPE_UINT32", "dims": ["1"]},
        ],
        "parameters": {
            "served_model_names": {"string_value": "minilm"},
            "max_model_len": {"string_value": "256"},
        },
    }

    model = parse_model_config("all-minilm", config)

    assert model is not None
    assert (model.kind, model.max_batch_size, model.context_length) == ("embed", 32, 256)
    assert model.outputs == {"embedding", "num_input_tokens"}
    assert [(c.id, c.triton_model, c.kind) for c in model.cards()] == [
        ("all-minilm", "all-minilm", "embed"),
        ("minilm", "all-minilm", "embed"),
    ]


def test_bad_max_model_len_is_ignored() -> None:
    config = {
        "model_transaction_policy": {"decoupled": True},
        "parameters": {"max_model_len": {"string_value": "big"}},
    }
    model = parse_model_config("m", config)
    assert model is not None and model.context_length is None


def _inputs(request: service_pb2.ModelInferRequest) -> dict[str, tuple[str, list[int], object]]:
    found: dict[str, tuple[str, list[int], object]] = {}
    for tensor in request.inputs:
        if tensor.datatype == "BYTES":
            (raw,) = tensor.contents.bytes_contents
            value: object = raw.decode()
        else:
            (value,) = tensor.contents.bool_contents
        found[tensor.name] = (tensor.datatype, list(tensor.shape), value)
    return found


@pytest.mark.parametrize(("batched", "shape"), [(True, [1, 1]), (False, [1])])
def test_completion_request_tensors(batched: bool, shape: list[int]) -> None:
    inp = GenerationInput(
        model="m", prompt="Hi", sampling=SamplingParams(max_tokens=3), request_id="r-0"
    )

    request = build_request(inp, batched=batched)

    assert (request.model_name, request.id) == ("m", "r-0")
    inputs = _inputs(request)
    assert inputs["text_input"] == ("BYTES", shape, "Hi")
    assert "messages" not in inputs
    for flag in ("stream", "exclude_input_in_output", "return_finish_reason",
                 "return_num_input_tokens", "return_num_output_tokens"):
        assert inputs[flag] == ("BOOL", shape, True)
    assert json.loads(str(inputs["sampling_parameters"][2])) == {"max_tokens": 3}
    assert [o.name for o in request.outputs] == list(OUTPUTS)
    assert request.parameters["triton_enable_empty_final_response"].bool_param


def test_logprobs_ask_for_the_logprobs_output() -> None:
    inp = GenerationInput(model="m", prompt="Hi", sampling=SamplingParams(logprobs=2))

    request = build_request(inp, batched=True)

    assert _inputs(request)["return_logprobs"] == ("BOOL", [1, 1], True)
    assert json.loads(str(_inputs(request)["sampling_parameters"][2])) == {"logprobs": 2}
    assert [o.name for o in request.outputs] == [*OUTPUTS, "logprobs"]
    plain = build_request(GenerationInput(model="m", prompt="Hi"), batched=True)
    assert "return_logprobs" not in _inputs(plain)
    assert "logprobs" not in [o.name for o in plain.outputs]


def test_count_request_tensors() -> None:
    request = build_count_request("m", "count me", "tc-0", batched=False)

    assert (request.model_name, request.id) == ("m", "tc-0")
    assert _inputs(request) == {
        "text_input": ("BYTES", [1], "count me"),
        "count_tokens_only": ("BOOL", [1], True),
        "return_num_input_tokens": ("BOOL", [1], True),
    }
    assert [o.name for o in request.outputs] == ["num_input_tokens"]


def test_parse_vllm_backend_logprobs() -> None:
    first = {
        "7": {"logprob": -3.0, "rank": 3, "decoded_token": " z"},
        "1": {"logprob": -0.1, "rank": 1, "decoded_token": " a"},
        "2": {"logprob": -2.0, "rank": 2, "decoded_token": None},
    }
    second = {"5": {"logprob": float("-inf"), "rank": 9, "decoded_token": "!"}}

    parsed = parse_logprobs([json.dumps([first]), json.dumps([second]), "null", ""])

    assert parsed == (
        TokenLogprob(
            " z", -3.0, (TopLogprob(" a", -0.1), TopLogprob("", -2.0), TopLogprob(" z", -3.0))
        ),
        TokenLogprob("!", -9999.0, (TopLogprob("!", -9999.0),)),
    )


@pytest.mark.parametrize("payload", ["{not json", '[{"1": {"rank": 1}}]', "[[1, 2]]"])
def test_malformed_logprobs_are_an_upstream_error(payload: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_logprobs([payload])
    assert caught.value.status_code == 500


def test_chat_request_sends_messages_as_json() -> None:
    messages = ({"role": "user", "content": "héllo"},)

    inputs = _inputs(build_request(GenerationInput(model="m", messages=messages), batched=True))

    assert "text_input" not in inputs
    assert json.loads(str(inputs["messages"][2])) == [{"role": "user", "content": "héllo"}]


def test_sampling_json_has_only_set_fields() -> None:
    assert json.loads(SamplingParams().to_json()) == {}
    full = SamplingParams(
        max_tokens=1, temperature=0.0, top_p=0.5, top_k=4, repetition_penalty=1.1,
        presence_penalty=0.2, frequency_penalty=0.3, seed=9, stop=("a", "b"), ignore_eos=True,
    )
    assert json.loads(full.to_json()) == {
        "max_tokens": 1, "temperature": 0.0, "top_p": 0.5, "top_k": 4, "repetition_penalty": 1.1,
        "presence_penalty": 0.2, "frequency_penalty": 0.3, "seed": 9, "stop": ["a", "b"],
        "ignore_eos": True,
    }


def _bytes_raw(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _response(
    text: list[str] | None, reason: str, n_in: int, n_out: int, final: bool
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="m", id="r")
    response.parameters["triton_final_response"].bool_param = final
    if text is None:
        return response
    for name, dtype, raw in (
        ("text_output", "BYTES", _bytes_raw(text)),
        ("finish_reason", "BYTES", _bytes_raw([reason])),
        ("num_input_tokens", "UINT32", np.array([[n_in]], dtype=np.uint32).tobytes()),
        ("num_output_tokens", "UINT32", np.array([[n_out]], dtype=np.uint32).tobytes()),
    ):
        count = len(text) if name == "text_output" else 1
        response.outputs.add(name=name, datatype=dtype, shape=[1, count])
        response.raw_output_contents.append(raw)
    return response


def test_decode_a_middle_response() -> None:
    decoded = decode_response(_response(["Hel", "lo"], "", 5, 2, final=False))

    assert decoded.text == "Hello"
    assert decoded.finish_reason is None
    assert (decoded.num_input_tokens, decoded.num_output_tokens) == (5, 2)
    assert not decoded.final


def test_decode_a_final_response_with_outputs() -> None:
    decoded = decode_response(_response(["!"], "length", 5, 1, final=True))

    assert (decoded.text, decoded.finish_reason, decoded.final) == ("!", "length", True)


def test_decode_an_empty_final_response() -> None:
    decoded = decode_response(_response(None, "", 0, 0, final=True))

    assert (decoded.text, decoded.finish_reason) == ("", None)
    assert (decoded.num_output_tokens, decoded.final) == (None, True)


def test_decode_the_engine_a_model_names_with_its_token_count() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", id="r")
    response.parameters["triton_final_response"].bool_param = True
    for name, dtype, raw in (("num_input_tokens", "UINT32", np.array([[0]], dtype=np.uint32).tobytes()),
                             ("engine", "BYTES", _bytes_raw(["fallback"]))):
        response.outputs.add(name=name, datatype=dtype, shape=[1, 1])
        response.raw_output_contents.append(raw)

    assert decode_response(response).engine == "fallback"
    assert decode_response(_response(["x"], "", 1, 1, final=True)).engine is None
