"""A deterministic streaming echo model for gateway tests.

The "tokens" are the whitespace-separated words of `text_input` (for chat: of the last
message's content). Each word is one response (word plus a space, except the last word sent);
`max_tokens` cuts the answer with finish_reason "length", otherwise it ends with "stop".
`num_input_tokens` counts the words of the whole input (every message for chat);
`count_tokens_only` answers with that count alone.

With `return_logprobs`, each word comes with vllm_backend-style logprobs: the word itself
(token id 1000 + position, logprob -0.25 * (position + 1), rank 1), then `logprobs - 1`
runners-up "alt1", "alt2", ... (ids 1, 2, ..., each 1.0 less likely than the one before),
where `logprobs` is the sampling parameter of that name.

Magic words, so tests can drive the edge cases:
- `FAIL` anywhere in the input: the request fails with `[INVALID_ARG] echo refuses FAIL`.
- `SLOW` anywhere in the input: a pause of `SLOW_DELAY_S` before each word, so a client
  can disconnect mid-stream. Cancelled requests are counted in the
  `echo_cancelled_requests_total` metric.

All requests of one `execute` call advance together, one word each per round, and every
round checks `is_cancelled()` before sending.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import chatllm_wire as wire
import numpy as np
import triton_python_backend_utils as pb_utils

SLOW_DELAY_S = 0.05


@dataclass
class _Stream:
    """One request in flight."""

    sender: Any
    words: list[str]
    input_words: int
    limit: int
    slow: bool
    logprobs: int | None = None
    sent: int = 0
    done: bool = False
    request_id: str = field(default="")


def _string_input(request: Any, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _flag(request: Any, name: str) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor is not None and bool(tensor.as_numpy().reshape(-1)[0])


def _logprobs_json(word: str, position: int, top: int) -> str:
    sampled_logprob = -0.25 * (position + 1)
    entries = [wire.WireLogprob(1000 + position, sampled_logprob, 1, word)]
    entries += [wire.WireLogprob(j, sampled_logprob - j, j + 1, f"alt{j}") for j in range(1, top)]
    return wire.logprobs_json([entries])


def _response(
    text: str, finish_reason: str, input_words: int, output_words: int, logprobs: str | None = None
) -> Any:
    tensors = [
        pb_utils.Tensor(wire.TEXT_OUTPUT, np.array([[text.encode("utf-8")]], dtype=np.object_)),
        pb_utils.Tensor(
            wire.FINISH_REASON, np.array([[finish_reason.encode("utf-8")]], dtype=np.object_)
        ),
        pb_utils.Tensor(wire.NUM_INPUT_TOKENS, np.array([[input_words]], dtype=np.uint32)),
        pb_utils.Tensor(wire.NUM_OUTPUT_TOKENS, np.array([[output_words]], dtype=np.uint32)),
    ]
    if logprobs is not None:
        tensors.append(
            pb_utils.Tensor(wire.LOGPROBS, np.array([[logprobs.encode("utf-8")]], dtype=np.object_))
        )
    return pb_utils.InferenceResponse(output_tensors=tensors)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self._logger = pb_utils.Logger
        # The family must outlive its metrics, so it is kept on the instance.
        self._family = pb_utils.MetricFamily(
            name="echo_cancelled_requests_total",
            description="Requests of the echo model that stopped because they were cancelled",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._cancelled = self._family.Metric(labels={"model": args["model_name"]})

    def execute(self, requests: list[Any]) -> None:
        streams = []
        for request in requests:
            stream = self._start(request)
            if stream is not None:
                streams.append(stream)
        while streams:
            if any(s.slow for s in streams):
                time.sleep(SLOW_DELAY_S)
            for stream in streams:
                self._step(stream)
            streams = [s for s in streams if not s.done]
        return None

    def _start(self, request: Any) -> _Stream | None:
        sender = request.get_response_sender()
        try:
            text, input_text = self._parse_input(request)
            params = wire.parse_sampling(_string_input(request, wire.SAMPLING_PARAMETERS))
            max_tokens = params.max_tokens
        except wire.WireError as exc:
            self._fail(sender, wire.error_message(exc.code, exc.message), pb_utils.TritonError.INVALID_ARG)
            return None
        except (ValueError, KeyError, TypeError) as exc:
            code, text = wire.split_error(str(exc))
            self._fail(sender, wire.error_message(code or "INVALID_ARG", text), pb_utils.TritonError.INVALID_ARG)
            return None
        if "FAIL" in input_text.split():
            self._fail(sender, wire.error_message("INVALID_ARG", "echo refuses FAIL"),
                       pb_utils.TritonError.INVALID_ARG)
            return None
        if _flag(request, wire.COUNT_TOKENS_ONLY):
            sender.send(
                _response("", "", len(input_text.split()), 0),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return None
        words = text.split()
        return _Stream(
            sender=sender,
            words=words,
            input_words=len(input_text.split()),
            limit=len(words) if max_tokens is None else min(max_tokens, len(words)),
            slow="SLOW" in input_text.split(),
            logprobs=int(params.logprobs or 0) if _flag(request, wire.RETURN_LOGPROBS) else None,
            request_id=request.request_id(),
        )

    @staticmethod
    def _parse_input(request: Any) -> tuple[str, str]:
        """(the words to echo, the whole input whose words count as prompt tokens)."""
        raw_messages = _string_input(request, wire.MESSAGES)
        if raw_messages is not None:
            messages = json.loads(raw_messages)
            if not isinstance(messages, list) or not messages:
                raise ValueError("[INVALID_ARG] messages must be a non-empty JSON list")
            contents = [str(m.get("content") or "") for m in messages]
            return contents[-1], " ".join(contents)
        text = _string_input(request, wire.TEXT_INPUT)
        if text is None:
            raise ValueError("[INVALID_ARG] either text_input or messages is required")
        return text, text

    def _step(self, stream: _Stream) -> None:
        if stream.sender.is_cancelled():
            self._cancelled.increment(1)
            self._logger.log_info(
                f"[echo] request {stream.request_id} cancelled after {stream.sent} words"
            )
            self._fail(
                stream.sender, "[CANCELLED] request cancelled", pb_utils.TritonError.CANCELLED
            )
            stream.done = True
            return
        if stream.limit == 0:  # nothing to say
            stream.sender.send(
                _response("", "stop", stream.input_words, 0),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            stream.done = True
            return
        index = stream.sent
        stream.sent += 1
        last = stream.sent == stream.limit
        word = stream.words[index] + ("" if last else " ")
        logprobs = None if stream.logprobs is None else _logprobs_json(word, index, stream.logprobs)
        if not last:
            stream.sender.send(_response(word, "", stream.input_words, 1, logprobs))
            return
        reason = "length" if stream.limit < len(stream.words) else "stop"
        # The last word rides with the final flag.
        stream.sender.send(
            _response(word, reason, stream.input_words, 1, logprobs),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
        stream.done = True

    @staticmethod
    def _fail(sender: Any, message: str, code: Any) -> None:
        sender.send(
            pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def finalize(self) -> None:
        pass
