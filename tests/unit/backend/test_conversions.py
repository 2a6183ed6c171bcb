"""The Triton adapter's conversions, without Triton: request tensors -> the engine's request,
engine events -> response tensors, engine errors -> Triton errors."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest

import chatllm_wire as wire
from chatllm_engine.errors import (
    ContextTooLong,
    EngineDead,
    EngineError,
    EngineOverloaded,
    InvalidRequest,
    RequestCancelled,
)
from chatllm_engine.types import FinishReason, Logprob, TokenEvent, TokenLogprobs
from tests.unit.backend.conftest import FakeRequest

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


# ---- request tensors -> GenerationRequest, SamplingParams, OutputOptions ----------------------


def test_a_chat_request_carries_its_messages_tools_sampling_and_output_options(backend_model: Any) -> None:
    request = FakeRequest(**{
        wire.MESSAGES: json.dumps(MESSAGES), wire.TOOLS: json.dumps(TOOLS),
        wire.CHAT_TEMPLATE_KWARGS: json.dumps({"enable_thinking": False}),
        wire.SAMPLING_PARAMETERS: json.dumps({"temperature": 0.5, "max_tokens": 7, "stop": "END", "seed": 3,
                                              "stop_token_ids": [2], "logprobs": 2}),
        wire.STREAM: True, wire.RETURN_FINISH_REASON: True, wire.RETURN_NUM_INPUT_TOKENS: True,
        wire.RETURN_LOGPROBS: True})

    gen, options, prompt = backend_model.parse_request(request, "r-1")

    assert gen.request_id == "r-1"
    assert gen.prompt is None and prompt == ""
    assert gen.messages == tuple(MESSAGES)
    assert gen.tools == tuple(TOOLS)
    assert gen.chat_template_kwargs == {"enable_thinking": False}
    sampling = gen.sampling
    assert (sampling.temperature, sampling.max_tokens, sampling.seed) == (0.5, 7, 3)
    assert (sampling.stop, sampling.stop_token_ids, sampling.logprobs) == (("END",), (2,), 2)
    # Chat output never repeats the prompt.
    assert options == backend_model.OutputOptions(stream=True, exclude_input=True, finish_reason=True,
                                                  num_input_tokens=True, logprobs=True)


def test_a_text_prompt_keeps_its_text_and_the_defaults(backend_model: Any) -> None:
    gen, options, prompt = backend_model.parse_request(FakeRequest(**{wire.TEXT_INPUT: "Once upon"}), "r")

    assert gen.prompt == "Once upon" and prompt == "Once upon"
    assert gen.messages is None and gen.tools is None
    assert gen.sampling == backend_model.SamplingParams()
    assert options == backend_model.OutputOptions()


@pytest.mark.parametrize("return_logprobs, asked, expected", [
    (False, 3, None),  # not returned: not computed
    (True, None, 0),  # returned: the sampled token's at least
    (True, 4, 4),
])
def test_logprobs_are_computed_only_when_returned(backend_model: Any, return_logprobs: bool, asked: int | None,
                                                  expected: int | None) -> None:
    sampling = {} if asked is None else {"logprobs": asked}
    request = FakeRequest(**{wire.TEXT_INPUT: "x", wire.SAMPLING_PARAMETERS: json.dumps(sampling),
                             wire.RETURN_LOGPROBS: return_logprobs})

    gen, _, _ = backend_model.parse_request(request, "r")

    assert gen.sampling.logprobs == expected


@pytest.mark.parametrize("inputs, message", [
    ({}, "either text_input or messages is required"),
    ({wire.MESSAGES: "[{"}, "messages is not valid JSON"),
    ({wire.MESSAGES: "[]"}, "messages must be a non-empty JSON list"),
    ({wire.TEXT_INPUT: "x", wire.TOOLS: '[{"type": "retrieval"}]'}, "tools[0] must be"),
    ({wire.TEXT_INPUT: "x", wire.CHAT_TEMPLATE_KWARGS: "[1]"}, "chat_template_kwargs must be a JSON object"),
    ({wire.TEXT_INPUT: "x", wire.SAMPLING_PARAMETERS: '{"temprature": 1}'}, "unknown sampling parameter(s)"),
    ({wire.TEXT_INPUT: "x", wire.SAMPLING_PARAMETERS: '{"top_p": 0}'}, "top_p"),
])
def test_bad_request_tensors_are_invalid_requests_naming_the_problem(backend_model: Any, inputs: dict[str, str],
                                                                     message: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        backend_model.parse_request(FakeRequest(**inputs), "r")

    assert message in str(excinfo.value)


# ---- TokenEvent -> response tensors -----------------------------------------------------------


def outputs(tensors: list[Any]) -> dict[str, np.ndarray]:
    return {tensor.name(): tensor.as_numpy() for tensor in tensors}


def logprob(token_id: int, rank: int, text: str) -> Logprob:
    return Logprob(token_id=token_id, logprob=-0.5 * rank, rank=rank, decoded_token=text)


LOGPROBS = (TokenLogprobs(sampled=logprob(7, 2, " world"), top=(logprob(9, 1, " there"),)),)
FINAL = TokenEvent("r", " world", num_output_tokens=1, num_input_tokens=4, finish_reason=FinishReason.STOP,
                   logprobs=LOGPROBS)


@pytest.mark.parametrize("batched, shape", [(True, (1, 1)), (False, (1,))])
def test_a_final_event_becomes_every_tensor_asked_for(backend_model: Any, batched: bool,
                                                      shape: tuple[int, ...]) -> None:
    options = backend_model.OutputOptions(finish_reason=True, num_input_tokens=True, num_output_tokens=True,
                                          logprobs=True)

    out = outputs(backend_model.response_tensors(options, "Hello world", FINAL, 4, 2, None, batched))

    assert list(out) == [wire.TEXT_OUTPUT, wire.FINISH_REASON, wire.NUM_INPUT_TOKENS, wire.NUM_OUTPUT_TOKENS,
                         wire.LOGPROBS]
    assert all(array.shape == shape for array in out.values())
    assert out[wire.TEXT_OUTPUT].reshape(-1)[0].decode() == "Hello world"
    assert out[wire.FINISH_REASON].reshape(-1)[0] == b"stop"
    assert out[wire.NUM_INPUT_TOKENS].dtype == np.uint32 and int(out[wire.NUM_INPUT_TOKENS].reshape(-1)[0]) == 4
    assert int(out[wire.NUM_OUTPUT_TOKENS].reshape(-1)[0]) == 2
    positions = wire.parse_logprobs(out[wire.LOGPROBS].reshape(-1)[0].decode())
    assert [[(p.token_id, p.rank, p.decoded_token) for p in position] for position in positions] == [
        [(7, 2, " world"), (9, 1, " there")]]


def test_only_the_text_is_sent_unless_more_is_asked_for(backend_model: Any) -> None:
    middle = TokenEvent("r", " wor", num_output_tokens=1, num_input_tokens=4)

    out = outputs(backend_model.response_tensors(backend_model.OutputOptions(), " wor", middle, 4, 1, None, True))

    assert list(out) == [wire.TEXT_OUTPUT]


def test_an_unfinished_event_has_an_empty_finish_reason(backend_model: Any) -> None:
    middle = TokenEvent("r", " wor", num_output_tokens=1, num_input_tokens=4)
    options = backend_model.OutputOptions(finish_reason=True)

    out = outputs(backend_model.response_tensors(options, " wor", middle, 4, 1, None, True))

    assert out[wire.FINISH_REASON].reshape(-1)[0] == b""


def test_accumulated_logprobs_replace_the_final_events_own(backend_model: Any) -> None:
    earlier = TokenLogprobs(sampled=logprob(5, 1, "Hello"), top=())
    options = backend_model.OutputOptions(logprobs=True)

    out = outputs(backend_model.response_tensors(options, "Hello world", FINAL, 4, 2, [earlier, *LOGPROBS], True))

    positions = wire.parse_logprobs(out[wire.LOGPROBS].reshape(-1)[0].decode())
    assert [position[0].token_id for position in positions] == [5, 7]


def test_a_token_count_answer_has_no_text(backend_model: Any) -> None:
    out = outputs(backend_model.count_tensors(12, True))

    assert out[wire.TEXT_OUTPUT].reshape(-1)[0] == b""
    assert int(out[wire.NUM_INPUT_TOKENS].reshape(-1)[0]) == 12
    assert int(out[wire.NUM_OUTPUT_TOKENS].reshape(-1)[0]) == 0


class NoMetrics:
    def observe_ttft(self, seconds: float) -> None:
        pass


def delivering_adapter(backend_model: Any, sender: Any, options: Any, prompt: str) -> Any:
    """The adapter's response side with one request in flight (what execute() leaves), no engine."""
    adapter = backend_model.TritonPythonModel()
    adapter._lock = threading.Lock()
    adapter._metrics = NoMetrics()
    adapter._batched = True
    adapter._inflight = {"r": backend_model.InFlight(channel=backend_model.ResponseChannel(sender), options=options,
                                                     prompt=prompt)}
    return adapter


EVENTS = [TokenEvent("r", "Hello", num_output_tokens=1, num_input_tokens=4,
                     logprobs=(TokenLogprobs(sampled=logprob(5, 1, "Hello"), top=()),)),
          FINAL]


def sent_texts(sender: Sender) -> list[tuple[str, int]]:
    return [(outputs(response.output_tensors)[wire.TEXT_OUTPUT].reshape(-1)[0].decode(), flags)
            for response, flags in sender.sent]


def test_a_streamed_request_gets_one_response_per_event_the_last_one_final(backend_model: Any) -> None:
    sender = Sender()
    adapter = delivering_adapter(backend_model, sender, backend_model.OutputOptions(stream=True), "Say:")

    for event in EVENTS:
        adapter._deliver("r", event)

    final = backend_model.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    assert sent_texts(sender) == [("Hello", 0), (" world", final)]
    assert adapter._inflight == {}


@pytest.mark.parametrize("exclude_input, text", [(False, "Say: Hello world"), (True, "Hello world")])
def test_a_request_not_streamed_gets_one_response_with_everything(backend_model: Any, exclude_input: bool,
                                                                  text: str) -> None:
    sender = Sender()
    options = backend_model.OutputOptions(exclude_input=exclude_input, num_output_tokens=True, logprobs=True)
    adapter = delivering_adapter(backend_model, sender, options, "Say: ")

    for event in EVENTS:
        adapter._deliver("r", event)

    [(response, _)] = sender.sent
    out = outputs(response.output_tensors)
    assert out[wire.TEXT_OUTPUT].reshape(-1)[0].decode() == text
    assert int(out[wire.NUM_OUTPUT_TOKENS].reshape(-1)[0]) == 2
    positions = wire.parse_logprobs(out[wire.LOGPROBS].reshape(-1)[0].decode())
    assert [position[0].token_id for position in positions] == [5, 7]


# ---- engine errors -> Triton errors ----------------------------------------------------------


class Overloaded(EngineOverloaded):
    """An error type the table does not list: it takes its base's code."""


@pytest.mark.parametrize("error, code", [
    (InvalidRequest("bad temperature"), "INVALID_ARG"),
    (ContextTooLong("prompt too long"), "INVALID_ARG"),
    (EngineOverloaded("full"), "UNAVAILABLE"),
    (Overloaded("full"), "UNAVAILABLE"),
    (RequestCancelled("cancelled"), "CANCELLED"),
    (EngineDead("engine stopped"), "INTERNAL"),
    (EngineError("anything else"), "INTERNAL"),
])
def test_each_engine_error_becomes_its_triton_code_named_in_the_message(backend_model: Any, error: EngineError,
                                                                        code: str) -> None:
    triton_error = backend_model.triton_error(error)

    assert triton_error.code == getattr(backend_model.pb_utils.TritonError, code)
    # gRPC streams carry only the message: the gateway reads the code back from it.
    assert wire.split_error(triton_error.message) == (code, str(error))


class Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []

    def send(self, response: Any, flags: int = 0) -> None:
        self.sent.append((response, flags))


@pytest.mark.parametrize("exc, code, text", [
    (EngineOverloaded("the engine is at capacity"), "UNAVAILABLE", "the engine is at capacity"),
    (KeyError("boom"), "INTERNAL", "internal error: 'boom'"),
])
def test_a_refused_request_gets_one_final_error_response(backend_model: Any, exc: Exception, code: str,
                                                         text: str) -> None:
    sender = Sender()
    adapter = backend_model.TritonPythonModel()  # _reject needs no engine

    adapter._reject(backend_model.ResponseChannel(sender), "r", exc)

    [(response, flags)] = sender.sent
    assert flags == backend_model.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    assert response.output_tensors is None
    assert wire.split_error(response.error.message) == (code, text)


def subclasses(cls: type[EngineError]) -> set[type[EngineError]]:
    direct = set(cls.__subclasses__())
    return direct.union(*(subclasses(c) for c in direct))


def test_the_error_table_lists_every_engine_error(backend_model: Any) -> None:
    defined = {cls for cls in subclasses(EngineError) if cls.__module__ == EngineError.__module__}

    assert set(backend_model.ERROR_CODES) == defined
    assert set(backend_model.ERROR_CODES.values()) <= set(wire.ERROR_CODES)
