"""Triton adapter of the chatllm backend: tensors in, engine requests; engine events, responses out.

The only module that imports `triton_python_backend_utils`. Threads:
- Triton's execute() thread: parses requests, refuses at once what cannot be served (server
  full, prompt far too long for the context) and hands the rest to the intake; it never
  tokenizes and never blocks on generation, so Triton's dynamic batcher keeps handing over
  new requests and a refusal takes milliseconds.
- the intake's two lane threads (`RequestIntake`): chat template + tokenization, then
  `engine.add_requests`; long prompts have their own lane, so they delay only each other.
- the engine thread (`EngineHost`, chatllm_engine/engine_host.py): loads the model, then runs the
  engine's step loop (vLLM's engine runs on threads of its own).
- the response thread: turns engine events into responses, watches for cancellation and
  publishes the engine's metrics.
Grammars of structured outputs compile (cached) in the intake lanes too, as part of the
engine's request preparation: neither execute() nor the step loop waits for them.

Tensor names, the `sampling_parameters` schema, the error prefix and the logprobs JSON come
from the wire contract `chatllm_wire`, shared with the gateway.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import chatllm_wire as wire
import numpy as np
import triton_python_backend_utils as pb_utils

from chatllm_engine.config import ConfigError, EngineConfig
from chatllm_engine.engine_host import engine_host
from chatllm_engine.errors import (ContextTooLong, EngineDead, EngineError, EngineOverloaded, InvalidRequest,
                                   RequestCancelled)
from chatllm_engine.intake import IntakeJob, RequestIntake, check_prompt_length, longest_token_chars
from chatllm_engine.types import (EventSink, FinishReason, GenerationRequest, SamplingParams, TokenEvent,
                                  TokenLogprobs)

SWEEP_INTERVAL_S = 0.05  # how often in-flight requests are checked for cancellation


class _TritonLogHandler(logging.Handler):
    """Forwards the engine's `logging` records to Triton's log with a [chatllm] prefix."""

    def emit(self, record: logging.LogRecord) -> None:
        message = f"[chatllm] {self.format(record)}"
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


logger = logging.getLogger("chatllm")


# Engine error -> the name of its TritonError code; a subclass not listed takes its nearest
# listed base, any other error INTERNAL.
ERROR_CODES: dict[type[EngineError], str] = {
    InvalidRequest: "INVALID_ARG",
    ContextTooLong: "INVALID_ARG",
    EngineOverloaded: "UNAVAILABLE",
    RequestCancelled: "CANCELLED",
    EngineDead: "INTERNAL",
}


def error_code_name(exc: EngineError) -> str:
    return next((ERROR_CODES[cls] for cls in type(exc).__mro__ if cls in ERROR_CODES), "INTERNAL")


def triton_error(exc: EngineError) -> Any:
    """A TritonError whose message starts with its code: gRPC streams carry only the message."""
    name = error_code_name(exc)
    return pb_utils.TritonError(wire.error_message(name, str(exc)), getattr(pb_utils.TritonError, name))


@dataclass(frozen=True)
class OutputOptions:
    stream: bool = False
    exclude_input: bool = False
    finish_reason: bool = False
    num_input_tokens: bool = False
    num_output_tokens: bool = False
    logprobs: bool = False


class ResponseChannel:
    """A request's response sender that cannot be used after its final response.

    Triton frees a request's response factory once the FINAL flag was sent; touching the
    sender after that (even `is_cancelled()`) reads freed memory and crashed tritonserver
    under bursts. Every use of a sender goes through one of these: the check "already
    final?" and the call into Triton happen under one lock, so no thread can interleave.
    """

    def __init__(self, sender: Any) -> None:
        self._sender = sender
        self._lock = threading.Lock()
        self._final = False

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._final

    def send(self, response: Any) -> bool:
        """A non-final response; False (nothing sent) once the request is finished."""
        with self._lock:
            if self._final:
                return False
            self._sender.send(response)
            return True

    def finish(self, response: Any) -> bool:
        """The final response; only the first call sends, later ones return False."""
        with self._lock:
            if self._final:
                return False
            self._final = True
            self._sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return True

    def is_cancelled(self) -> bool:
        """Whether the client cancelled; a finished request is never asked again."""
        with self._lock:
            return not self._final and bool(self._sender.is_cancelled())


@dataclass
class InFlight:
    """A request between execute() and its final response; owned by the response thread."""

    channel: ResponseChannel
    options: OutputOptions
    prompt: str
    text: list[str] = field(default_factory=list)  # non-streaming: accumulated output
    submitted: float = field(default_factory=time.monotonic)  # for the time-to-first-token metric
    output_tokens: int = 0
    input_tokens: int = 0
    logprobs: list[TokenLogprobs] = field(default_factory=list)  # non-streaming: accumulated


def logprobs_json(entries: tuple[TokenLogprobs, ...] | list[TokenLogprobs]) -> str:
    """The `logprobs` output (chatllm_wire): per token the sampled one first, then the most likely."""
    return wire.logprobs_json([
        [wire.WireLogprob(i.token_id, i.logprob, i.rank, i.decoded_token) for i in (e.sampled, *e.top)]
        for e in entries])


def output_tensor(name: str, values: list[Any], dtype: Any, batched: bool) -> Any:
    """One output tensor: shape [1, n] for a model with batching (max_batch_size > 0), else [n]."""
    array = np.array(values, dtype=dtype)
    return pb_utils.Tensor(name, array.reshape(1, -1) if batched else array)


def response_tensors(options: OutputOptions, text: str, event: TokenEvent, input_tokens: int, output_tokens: int,
                     logprobs: list[TokenLogprobs] | None, batched: bool) -> list[Any]:
    """A response's tensors: the text, and what `options` asks for. `logprobs` (accumulated
    over a non-streamed request) replaces the event's own."""
    tensors = [output_tensor(wire.TEXT_OUTPUT, [text.encode("utf-8")], np.object_, batched)]
    if options.finish_reason:
        reason = event.finish_reason.value if event.finish_reason else ""
        tensors.append(output_tensor(wire.FINISH_REASON, [reason.encode()], np.object_, batched))
    if options.num_input_tokens:
        tensors.append(output_tensor(wire.NUM_INPUT_TOKENS, [input_tokens], np.uint32, batched))
    if options.num_output_tokens:
        tensors.append(output_tensor(wire.NUM_OUTPUT_TOKENS, [output_tokens], np.uint32, batched))
    if options.logprobs:
        entries = logprobs if logprobs is not None else (event.logprobs or ())
        tensors.append(output_tensor(wire.LOGPROBS, [logprobs_json(entries).encode("utf-8")], np.object_, batched))
    return tensors


def count_tensors(count: int, batched: bool, engine: str | None = None) -> list[Any]:
    """The answer to `count_tokens_only`: the prompt's token count, no text; and the engine
    serving the model (`engine`) when the model declares that output."""
    tensors = [output_tensor(wire.TEXT_OUTPUT, [b""], np.object_, batched),
               output_tensor(wire.FINISH_REASON, [b""], np.object_, batched),
               output_tensor(wire.NUM_INPUT_TOKENS, [count], np.uint32, batched),
               output_tensor(wire.NUM_OUTPUT_TOKENS, [0], np.uint32, batched)]
    if engine is not None:
        tensors.append(output_tensor(wire.ENGINE, [engine.encode()], np.object_, batched))
    return tensors


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)
    return value[0] if value.size else None


def _text(request: Any, name: str) -> str | None:
    value = _scalar(request, name)
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_sampling(text: str | None) -> SamplingParams:
    """The `sampling_parameters` tensor -> SamplingParams, checked by the wire contract."""
    try:
        parsed = wire.parse_sampling(text)
    except wire.WireError as exc:
        raise InvalidRequest(exc.message) from None
    return SamplingParams(stop=parsed.stop, stop_token_ids=parsed.stop_token_ids,
                          structured=parsed.structured_outputs, **parsed.set_values())


def _json_input(request: Any, name: str) -> Any:
    try:
        return wire.parse_json_tensor(_text(request, name), name)
    except wire.WireError as exc:
        raise InvalidRequest(exc.message) from None


def parse_request(request: Any, request_id: str) -> tuple[GenerationRequest, OutputOptions, str]:
    """A Triton request's tensors -> the engine's request, what to return, and the prompt text."""
    prompt = _text(request, wire.TEXT_INPUT)
    raw_messages = _json_input(request, wire.MESSAGES)
    raw_tools = _json_input(request, wire.TOOLS)
    template_kwargs = _json_input(request, wire.CHAT_TEMPLATE_KWARGS)
    messages: tuple[dict[str, Any], ...] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    try:
        if raw_messages is not None:
            messages = wire.check_messages(raw_messages)
        elif prompt is None:
            raise InvalidRequest("either text_input or messages is required")
        if raw_tools:
            tools = wire.check_tools(raw_tools)
    except wire.WireError as exc:
        raise InvalidRequest(exc.message) from None
    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise InvalidRequest("chat_template_kwargs must be a JSON object")

    def flag(name: str) -> bool:
        value = _scalar(request, name)
        return bool(value) if value is not None else False

    options = OutputOptions(
        stream=flag(wire.STREAM), exclude_input=flag(wire.EXCLUDE_INPUT_IN_OUTPUT) or messages is not None,
        finish_reason=flag(wire.RETURN_FINISH_REASON), num_input_tokens=flag(wire.RETURN_NUM_INPUT_TOKENS),
        num_output_tokens=flag(wire.RETURN_NUM_OUTPUT_TOKENS), logprobs=flag(wire.RETURN_LOGPROBS))
    sampling = parse_sampling(_text(request, wire.SAMPLING_PARAMETERS))
    # Logprobs cost work per step: computed only when they are returned (0 alternatives
    # unless `logprobs` in sampling_parameters asks for more).
    if not options.logprobs:
        sampling = dataclasses.replace(sampling, logprobs=None)
    elif sampling.logprobs is None:
        sampling = dataclasses.replace(sampling, logprobs=0)
    gen = GenerationRequest(
        request_id=request_id, prompt=None if messages is not None else prompt, messages=messages,
        sampling=sampling, tools=tools, chat_template_kwargs=template_kwargs)
    return gen, options, prompt or ""


class TritonPythonModel:
    """The chatllm backend: one engine per model instance."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        """Declare the `engine` output (which engine serves the model, automatic choice
        included; sent with token counts), so model configs need not list it."""
        if wire.ENGINE not in {o.get("name") for o in auto_complete_model_config.as_dict().get("output", [])}:
            auto_complete_model_config.add_output({"name": wire.ENGINE, "data_type": "TYPE_STRING", "dims": [-1]})
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        handler = _TritonLogHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logging.getLogger("chatllm_engine").addHandler(handler)
        logging.getLogger("chatllm_engine").setLevel(logging.INFO)
        logger.setLevel(logging.INFO)

        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise pb_utils.TritonModelException("chatllm needs `model_transaction_policy { decoupled: true }`")
        try:
            config = EngineConfig.from_model_config(
                self.model_config, args.get("model_instance_kind", "CPU"),
                int(args.get("model_instance_device_id", "0")))
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"{args['model_name']}: {exc}") from exc
        self._batched = int(self.model_config.get("max_batch_size", 0)) > 0
        # Loads the model and runs the engine `engine` names (ours, fallback or vLLM) on its thread(s).
        self._engine_thread = engine_host(config)
        try:
            self.engine = self._engine_thread.start()
        except EngineError as exc:
            raise pb_utils.TritonModelException(f"{args['model_name']}: {exc}") from exc
        kv_cache_tokens = getattr(self.engine, "kv_cache_tokens", config.kv_cache_tokens)  # vLLM sizes its own
        self._metrics = _Metrics(args["model_name"], args.get("model_version", "1"),
                                 args.get("model_instance_name", ""), kv_cache_tokens, self._engine_thread.kind)

        # _inflight is written by execute() (add), the response and intake threads (remove): _lock guards it.
        self._lock = threading.Lock()
        self._inflight: dict[str, InFlight] = {}
        # Requests one instance holds (running + waiting) before execute() refuses at once.
        self._capacity = config.max_num_seqs + config.max_queue_size
        self._context_tokens = min(self.engine.max_model_len, config.kv_cache_tokens)
        self._max_prompt_chars = self._context_tokens * longest_token_chars(self.engine.tokenizer)
        self._intake = RequestIntake(self.engine, on_refused=self._refused, on_counted=self._counted,
                                     is_wanted=self._is_wanted)
        # Engine thread -> response thread.
        self._events: queue.Queue[tuple[str, TokenEvent | EngineError] | None] = queue.Queue()
        self._response_thread = threading.Thread(target=self._respond_loop, name="chatllm-responses",
                                                 daemon=True)
        self._response_thread.start()
        logger.info("%s ready on %s (engine %s): max_num_seqs=%d kv_cache_tokens=%d max_model_len=%d",
                    args["model_name"], config.device, self._engine_thread.kind, config.max_num_seqs,
                    kv_cache_tokens, self.engine.max_model_len)

    # ---- execute thread ------------------------------------------------------------------

    def execute(self, requests: list[Any]) -> None:
        """Hand every request to the engine in one call: those that arrived together are
        admitted, and prefilled, together."""
        if len(requests) > 1:
            logger.info("execute() got %d requests at once", len(requests))
        jobs: list[IntakeJob] = []
        for request in requests:
            channel = ResponseChannel(request.get_response_sender())
            request_id = f"{request.request_id() or 'req'}-{uuid.uuid4().hex[:8]}"
            try:
                gen, options, prompt = parse_request(request, request_id)
                chars = check_prompt_length(gen, self._max_prompt_chars, self._context_tokens)
                count_only = bool(_scalar(request, wire.COUNT_TOKENS_ONLY))
                with self._lock:
                    if not count_only and len(self._inflight) >= self._capacity:
                        raise EngineOverloaded(
                            f"the engine is at capacity ({len(self._inflight)} requests running or waiting)")
                    self._inflight[request_id] = InFlight(channel=channel, options=options, prompt=prompt)
            except Exception as exc:  # noqa: BLE001 - every request gets a final response
                self._reject(channel, request_id, exc)
                continue
            jobs.append(IntakeJob(gen, self._sink(request_id), chars, count_only))
        self._intake.submit(jobs)
        return None

    # ---- intake threads ------------------------------------------------------------------

    def _is_wanted(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._inflight

    def _refused(self, request_id: str, exc: Exception) -> None:
        with self._lock:
            entry = self._inflight.pop(request_id, None)
        if entry is not None:
            self._reject(entry.channel, request_id, exc)

    def _counted(self, request_id: str, count: int) -> None:
        """Answer with the prompt's token count (`num_input_tokens`) without generating."""
        with self._lock:
            entry = self._inflight.pop(request_id, None)
        if entry is None:
            return
        declared = any(o.get("name") == wire.ENGINE for o in self.model_config.get("output", []))
        engine = self._engine_thread.kind if declared else None
        entry.channel.finish(pb_utils.InferenceResponse(output_tensors=count_tensors(count, self._batched, engine)))

    def _sink(self, request_id: str) -> EventSink:
        return lambda event: self._events.put((request_id, event))

    def _reject(self, channel: ResponseChannel, request_id: str, exc: Exception) -> None:
        if isinstance(exc, EngineError):
            logger.info("%s rejected: %s", request_id, exc)
            error = exc
        else:
            logger.exception("%s failed", request_id)
            error = EngineDead(f"internal error: {exc}")
        channel.finish(pb_utils.InferenceResponse(error=triton_error(error)))

    # ---- response thread -----------------------------------------------------------------

    def _respond_loop(self) -> None:
        next_sweep = time.monotonic()
        while True:
            try:
                item = self._events.get(timeout=SWEEP_INTERVAL_S)
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                break
            if item:
                request_id, event = item
                self._deliver(request_id, event)
            if time.monotonic() >= next_sweep:
                self._sweep_cancelled()
                self._metrics.publish(self.engine.stats)
                next_sweep = time.monotonic() + SWEEP_INTERVAL_S

    def _deliver(self, request_id: str, event: TokenEvent | EngineError) -> None:
        with self._lock:
            entry = self._inflight.get(request_id)
        if entry is None:  # already answered (cancelled)
            return
        if isinstance(event, EngineError):
            self._finish(request_id, pb_utils.InferenceResponse(error=triton_error(event)))
            return
        if entry.output_tokens == 0 and event.num_output_tokens > 0:
            self._metrics.observe_ttft(time.monotonic() - entry.submitted)
        entry.output_tokens += event.num_output_tokens
        entry.input_tokens = event.num_input_tokens
        if event.finish_reason is FinishReason.ABORT and entry.channel.is_cancelled():
            self._finish(request_id, pb_utils.InferenceResponse(error=triton_error(RequestCancelled("cancelled"))))
            return
        if entry.options.stream:
            response = self._response(entry, event.text, event, event.num_output_tokens)
            if event.finished:
                self._finish(request_id, response)
            else:
                entry.channel.send(response)
            return
        entry.text.append(event.text)
        if event.logprobs:
            entry.logprobs.extend(event.logprobs)
        if event.finished:
            text = "".join(entry.text)
            if not entry.options.exclude_input:
                text = entry.prompt + text
            self._finish(request_id, self._response(entry, text, event, entry.output_tokens, entry.logprobs))

    def _finish(self, request_id: str, response: Any) -> None:
        with self._lock:
            entry = self._inflight.pop(request_id, None)
        if entry is not None:
            entry.channel.finish(response)

    def _sweep_cancelled(self) -> None:
        with self._lock:
            entries = list(self._inflight.items())
        for request_id, entry in entries:
            if entry.channel.is_cancelled():
                logger.info("%s cancelled by the client", request_id)
                self.engine.abort(request_id)
                self._finish(request_id, pb_utils.InferenceResponse(
                    error=triton_error(RequestCancelled("the request was cancelled"))))

    def _response(self, entry: InFlight, text: str, event: TokenEvent, output_tokens: int,
                  logprobs: list[TokenLogprobs] | None = None) -> Any:
        return pb_utils.InferenceResponse(output_tensors=response_tensors(
            entry.options, text, event, entry.input_tokens, output_tokens, logprobs, self._batched))

    def finalize(self) -> None:
        # Triton calls this only once every response factory of the model is gone (its
        # streams have ended): on SIGTERM it keeps the model alive while they finish, for up
        # to --exit-timeout-secs. So there is nothing left to drain here.
        self._intake.stop(timeout=10)
        self._engine_thread.stop(timeout=10)
        self._events.put(None)
        self._response_thread.join(timeout=10)
        logger.info("finalized; engine stats %s", self.engine.stats)


class _Metrics:
    """The engine's numbers as Triton custom metrics (served on Triton's :8002/metrics).

    Labels: model, version and instance (`model_instance_name`), so several instances of one
    model publish separate gauges; sum over `instance` for the model. Written only by the
    response thread.
    """

    TTFT_BUCKETS = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0]

    def __init__(self, model: str, version: str, instance: str, kv_cache_tokens: int, engine: str = "ours") -> None:
        labels = {"model": model, "version": version, "instance": instance}
        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        histogram = pb_utils.MetricFamily.HISTOGRAM

        self._families: list[Any] = []  # a Metric is only valid while its family lives

        def metric(name: str, doc: str, kind: Any, **kwargs: Any) -> Any:
            family = pb_utils.MetricFamily(name=name, description=doc, kind=kind)
            self._families.append(family)
            return family.Metric(labels=labels, **kwargs)

        self.running = metric("chatllm_running_sequences", "Sequences in the running batch", gauge)
        self.waiting = metric("chatllm_waiting_sequences", "Sequences waiting for admission", gauge)
        self.kv_slots = metric("chatllm_kv_cache_slots", "KV-cache slots held by the batch (tokens)", gauge)
        self.kv_usage = metric("chatllm_kv_cache_usage_ratio",
                               "KV-cache slots held over the kv_cache_tokens budget (0..1)", gauge)
        self.max_batch = metric("chatllm_max_batch_size", "Largest running batch so far", gauge)
        self.output_tokens = metric("chatllm_output_tokens_total", "Output tokens generated", counter)
        self.steps = metric("chatllm_decode_steps_total", "Decode steps run", counter)
        self.preemptions = metric("chatllm_preemptions_total",
                                  "Sequences preempted (sent back to waiting) for lack of KV cache", counter)
        self.ttft = metric("chatllm_time_to_first_token_seconds",
                           "From execute() handing a request to the engine to its first output token "
                           "(Triton's queue time before that is nv_inference_queue_duration_us)",
                           histogram, buckets=self.TTFT_BUCKETS)
        info = pb_utils.MetricFamily(name="chatllm_engine_info", kind=gauge,
                                     description="1 for the engine serving this instance (label engine: "
                                                 "ours, fallback or vllm)")
        self._families.append(info)
        self.engine_info = info.Metric(labels={**labels, "engine": engine})
        self.engine_info.set(1)
        self._kv_capacity = max(1, kv_cache_tokens)
        self._published = {"tokens": 0, "steps": 0, "preemptions": 0}

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def publish(self, stats: Any) -> None:
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.kv_slots.set(stats.kv_slots)
        self.kv_usage.set(stats.kv_slots / self._kv_capacity)
        self.max_batch.set(stats.max_batch_size)
        for key, value, counter in (("tokens", stats.output_tokens, self.output_tokens),
                                    ("steps", stats.steps, self.steps),
                                    ("preemptions", stats.preemptions, self.preemptions)):
            if value > self._published[key]:
                counter.increment(value - self._published[key])
                self._published[key] = value
