"""vLLM's engine behind the interface the Triton adapter uses for ours (`engine: vllm`).

vLLM's `AsyncLLM` runs on an asyncio event loop owned by one thread of this module (it starts
its own engine-core process for the forward passes). Callers on other threads use
`add_requests` / `abort` / `tokenize` / `stats` / `max_model_len` exactly as on `LLMEngine`,
and get the same `TokenEvent`s: prompts are tokenized here (chat messages through the model's
template), every sampling field maps onto vLLM's `SamplingParams`, outputs arrive as deltas.

vLLM is imported only when this engine starts, so the default install never needs it. It
pins its own torch and transformers, so it lives in a virtualenv of its own (`make
vllm-install`), and tritonserver must find that virtualenv's `python3` (`tritonchat serve
--python-env .venv-vllm`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from chatllm_wire import StructuredOutput

from .adding import RequestAdder
from .chat import prompt_token_ids
from .config import EngineConfig
from .engine import EngineStats, _check_sampling
from .errors import ContextTooLong, EngineDead, EngineError, EngineOverloaded, InvalidRequest
from .types import EventSink, FinishReason, GenerationRequest, Logprob, SamplingParams, TokenEvent, TokenLogprobs

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 900.0  # first start compiles the model


def cache_home() -> Path:
    """Where de-quantised copies of GGUF weights are kept between starts."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritonchat" / "vllm-models"


def materialize_gguf(folder: str, gguf_file: str, trust_remote_code: bool, cache: Path | None = None) -> str:
    """A Hugging Face folder (safetensors + tokenizer) made once from a GGUF file.

    vLLM on CPU cannot read the quantised GGUF; transformers de-quantises it (as our engine
    does on load) and the result is saved under the cache, keyed by the file's path, size and
    modification time, so later starts load it directly.
    """
    source = Path(folder) / gguf_file
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = (cache or cache_home()) / f"{source.stem}-{key}"
    if (target / "config.json").exists():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantising %s into %s (once)", source, target)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    # The weights are plain float tensors now; what remains of GGUF is the marker that
    # forbids saving them.
    model.hf_quantizer = None  # type: ignore[assignment]  # not declared on PreTrainedModel
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same copy first
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def engine_kwargs(config: EngineConfig, model: str, tokenizer: str) -> dict[str, Any]:
    """vLLM engine arguments from our config (FastChat's vllm_worker flags)."""
    v = config.vllm
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": tokenizer,
        "dtype": config.dtype,
        "seed": config.seed,
        "trust_remote_code": config.trust_remote_code,
        "max_num_seqs": config.max_num_seqs,
        "enable_prefix_caching": config.enable_prefix_caching,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enforce_eager": v.enforce_eager,
        "tensor_parallel_size": config.num_gpus if config.device.startswith("cuda") else 1,
        "generation_config": "vllm",  # our defaults, not the model's sampling suggestions
    }
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    if v.block_size:
        kwargs["block_size"] = v.block_size
    if v.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = v.max_num_batched_tokens
    if v.swap_space:
        kwargs["swap_space"] = v.swap_space
    return kwargs


def sampling_params(params: SamplingParams, max_tokens: int) -> dict[str, Any]:
    """Our SamplingParams as keyword arguments of vLLM's SamplingParams (deltas out)."""
    return {
        "n": 1,
        "max_tokens": max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "ignore_eos": params.ignore_eos,
        "min_tokens": params.min_tokens,
        "logprobs": params.logprobs,
        "skip_special_tokens": True,
    }


def structured_outputs(spec: StructuredOutput) -> dict[str, Any]:
    """Our structured-output constraint as keyword arguments of vLLM's StructuredOutputsParams
    (the same five kinds; grammars are EBNF in both, vLLM compiles them with xgrammar too)."""
    if spec.kind == "json":
        return {"json": json.loads(spec.value)}
    if spec.kind == "json_object":
        return {"json_object": True}
    if spec.kind == "choice":
        return {"choice": spec.choices()}
    if spec.kind in ("regex", "grammar"):
        return {spec.kind: spec.value}
    raise InvalidRequest(f"vLLM's engine cannot constrain the output to a {spec.kind!r}")


def token_logprobs(position: dict[int, Any], token_id: int, top_n: int) -> TokenLogprobs:
    """One position of vLLM's logprobs ({token id: Logprob(logprob, rank, decoded_token)})."""

    def entry(tid: int, lp: Any) -> Logprob:
        return Logprob(int(tid), float(lp.logprob), int(lp.rank or 0), str(lp.decoded_token or ""))

    top = sorted((entry(t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= top_n),
                 key=lambda item: item.rank)
    return TokenLogprobs(entry(token_id, position[token_id]), tuple(top[:top_n]))


class _StatsLogger:
    """Fed by vLLM after each engine step (on the event loop); keeps EngineStats current."""

    def __init__(self, stats: EngineStats) -> None:
        self._stats = stats
        self.kv_cache_tokens = 0  # KV capacity in tokens, known once vLLM sized its cache

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        owner = self

        class Logger(StatLoggerBase):  # type: ignore[misc]
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self._config = vllm_config

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                owner.record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                cache = self._config.cache_config
                owner.kv_cache_tokens = int((cache.num_gpu_blocks or 0) * (cache.block_size or 0))

        return Logger(vllm_config, engine_index)

    def record(self, scheduler: Any, iteration: Any) -> None:
        stats = self._stats
        if scheduler is not None:
            stats.running = int(scheduler.num_running_reqs)
            stats.waiting = int(scheduler.num_waiting_reqs)
            stats.max_batch_size = max(stats.max_batch_size, stats.running)
            stats.kv_slots = int(round(float(scheduler.kv_cache_usage) * self.kv_cache_tokens))
            stats.peak_kv_slots = max(stats.peak_kv_slots, stats.kv_slots)
        if iteration is not None:
            stats.steps += 1
            stats.output_tokens += int(iteration.num_generation_tokens)
            stats.preemptions += int(iteration.num_preempted_reqs)


class VllmEngine(RequestAdder):
    """vLLM's AsyncLLM, driven from other threads through the LLMEngine interface."""

    kind = "vllm"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._stats = EngineStats()  # written by vLLM's stat logger on the event loop
        self.max_model_len = 0
        self.kv_cache_tokens = 0
        self.tokenizer: Any = None
        self._stats_logger = _StatsLogger(self._stats)
        self._engine: Any = None
        self._vllm: Any = None
        # The event loop thread owns _engine calls and _tasks; other threads only schedule onto it.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chatllm-vllm-loop", daemon=True)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # _lock guards _in_flight and _stopped (add_requests from execute(), finish on the loop).
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stopped = False

    @property
    def stats(self) -> EngineStats:
        """vLLM's numbers as of its last step. vLLM reports only while it steps, so once no
        request is in flight here, nothing runs or waits there either (a cancelled stream
        would otherwise stay "running" in the gauges until the next request)."""
        with self._lock:
            idle = self._in_flight == 0
        if not idle:
            return dataclasses.replace(self._stats)
        return dataclasses.replace(self._stats, running=0, waiting=0, kv_slots=0)

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and build vLLM's engine on it (compiles on a first start)."""
        self._set_cpu_environment()
        _utf8_locale()
        import vllm  # noqa: PLC0415 - lazy: only this engine needs it
        from transformers import AutoTokenizer

        from .loader import resolve_model_path

        self._vllm = vllm
        path = resolve_model_path(self.config.model_path)
        tokenizer_path = resolve_model_path(self.config.tokenizer_path) if self.config.tokenizer_path else path
        if self.config.gguf_file:
            path = materialize_gguf(path, self.config.gguf_file, self.config.trust_remote_code)
            if not self.config.tokenizer_path:
                tokenizer_path = path
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=self.config.trust_remote_code)
        if self.config.chat_template:
            self.tokenizer.chat_template = self.config.chat_template
        self._thread.start()
        kwargs = engine_kwargs(self.config, path, tokenizer_path)
        self._run(self._create(kwargs)).result(START_TIMEOUT_S)
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self.kv_cache_tokens = self._stats_logger.kv_cache_tokens

    async def _create(self, kwargs: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        for key in sorted(set(kwargs) - known):
            logger.warning("this vLLM has no engine argument %r: ignored", key)
        args = AsyncEngineArgs(**{k: v for k, v in kwargs.items() if k in known})
        self._engine = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats_logger.factory])

    def _set_cpu_environment(self) -> None:
        """vLLM's CPU backend reads its KV space and thread binding from the environment
        (of this process, which its engine-core process inherits)."""
        v = self.config.vllm
        if self.config.device != "cpu":
            return
        if v.cpu_kvcache_space:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(v.cpu_kvcache_space)
        if v.cpu_omp_threads_bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = v.cpu_omp_threads_bind

    def stop(self, timeout: float | None = 10.0) -> None:
        """Abort what runs, shut vLLM's engine (and its process) down, end the loop thread."""
        with self._lock:
            self._stopped = True
        if self._thread.is_alive():
            try:
                self._run(self._shutdown()).result(timeout)
            except Exception:  # noqa: BLE001 - stopping must go on
                logger.exception("vLLM shutdown failed")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    async def _shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self, coroutine: Any) -> Future[Any]:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.add_done_callback(_log_failure)
        return future

    # ---- caller side -----------------------------------------------------------------------

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids; chat messages go through the model's own chat template."""
        return prompt_token_ids(self.tokenizer, request, self.config.tool_call_parser)

    def add_requests(self, items: list[tuple[GenerationRequest, EventSink]]) -> list[int | EngineError]:
        """Validate, tokenize and hand requests to vLLM; per request its prompt token count
        or why it was refused (nothing is queued then)."""
        results: list[int | EngineError] = []
        for request, sink in items:
            try:
                prompt_ids, max_tokens = self._prepare(request)
                with self._lock:
                    if self._stopped:
                        raise EngineDead("the engine has stopped")
                    if self._in_flight >= self.config.max_num_seqs + self.config.max_queue_size:
                        raise EngineOverloaded("too many requests are waiting; retry later")
                    self._in_flight += 1
            except EngineError as exc:
                results.append(exc)
                continue
            self._loop.call_soon_threadsafe(self._start_request, request, prompt_ids, max_tokens, sink)
            results.append(len(prompt_ids))
        return results

    def abort(self, request_id: str) -> None:
        """Cancel a request; vLLM frees its sequence and the sink gets an ABORT event."""
        self._loop.call_soon_threadsafe(self._cancel, request_id)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], int]:
        params = request.sampling
        _check_sampling(params)
        if params.structured is not None:
            structured_outputs(params.structured)  # a kind vLLM lacks is refused before queueing
        prompt_ids = self.tokenize(request)
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty")
        room = self.max_model_len - len(prompt_ids)
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens < 1 or len(prompt_ids) + max_tokens > self.max_model_len:
            raise ContextTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.")
        return prompt_ids, max_tokens

    # ---- event loop thread ------------------------------------------------------------------

    def _start_request(self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int,
                       sink: EventSink) -> None:
        task = self._loop.create_task(self._generate(request, prompt_ids, max_tokens, sink))
        self._tasks[request.request_id] = task
        task.add_done_callback(functools.partial(self._done, request.request_id))

    def _done(self, request_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(request_id, None)
        with self._lock:
            self._in_flight -= 1
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: %s", request_id, task.exception())

    def _cancel(self, request_id: str) -> None:
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()

    async def _generate(self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int,
                        sink: EventSink) -> None:
        vllm = self._vllm
        from vllm.exceptions import VLLMClientError

        top_n = request.sampling.logprobs
        started = finished = False
        try:
            params = vllm.SamplingParams(**sampling_params(request.sampling, max_tokens),
                                         output_kind=vllm.sampling_params.RequestOutputKind.DELTA)
            if request.sampling.structured is not None:
                params.structured_outputs = vllm.sampling_params.StructuredOutputsParams(
                    **structured_outputs(request.sampling.structured))
            async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                      request.request_id):
                event = self._event(request.request_id, output, len(prompt_ids), top_n)
                started, finished = True, event.finished
                _deliver(sink, request.request_id, event)
        except asyncio.CancelledError:
            # vLLM's generate() aborts the request in its engine when its task is cancelled.
            if not finished:
                _deliver(sink, request.request_id, TokenEvent(
                    request_id=request.request_id, text="", num_output_tokens=0, num_input_tokens=len(prompt_ids),
                    finish_reason=FinishReason.ABORT))
            return
        except (ValueError, VLLMClientError) as exc:
            if not started:  # vLLM checks a request as it takes it (e.g. a grammar it cannot compile)
                logger.info("vLLM refused %s: %s", request.request_id, exc)
                _deliver(sink, request.request_id, InvalidRequest(f"vLLM refused the request: {exc}"))
            elif not finished:
                logger.exception("vLLM failed on %s", request.request_id)
                _deliver(sink, request.request_id, EngineDead(f"vLLM engine error: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - reported to the request, the engine goes on
            logger.exception("vLLM failed on %s", request.request_id)
            if not finished:
                _deliver(sink, request.request_id, EngineDead(f"vLLM engine error: {exc}"))
            return
        if not finished:  # vLLM ended the stream without a finished output
            _deliver(sink, request.request_id, TokenEvent(
                request_id=request.request_id, text="", num_output_tokens=0, num_input_tokens=len(prompt_ids),
                finish_reason=FinishReason.ABORT))

    @staticmethod
    def _event(request_id: str, output: Any, num_input_tokens: int, top_n: int | None) -> TokenEvent:
        completion = output.outputs[0]
        token_ids = tuple(int(t) for t in completion.token_ids)
        reason: FinishReason | None = None
        if output.finished:
            reason = FinishReason(completion.finish_reason) if completion.finish_reason in (
                "stop", "length", "abort") else FinishReason.STOP
        logprobs: tuple[TokenLogprobs, ...] | None = None
        if top_n is not None:
            positions = list(completion.logprobs or ())
            # A stop token (EOS, stop_token_ids: stop_reason is None or an int) is not text and
            # has no logprobs in our engine's events: leave it out here too.
            if reason is FinishReason.STOP and not isinstance(completion.stop_reason, str) and token_ids:
                positions, token_ids_text = positions[:-1], token_ids[:-1]
            else:
                token_ids_text = token_ids
            logprobs = tuple(token_logprobs(p, t, top_n) for p, t in zip(positions, token_ids_text))
        return TokenEvent(request_id=request_id, text=completion.text, num_output_tokens=len(token_ids),
                          num_input_tokens=num_input_tokens, finish_reason=reason, token_ids=token_ids,
                          logprobs=logprobs)


def _utf8_locale() -> None:
    """Triton's stub embeds Python without locale setup, so files opened without an encoding
    read as ASCII there; vLLM opens some that way (and fails on the first non-ASCII byte)."""
    import locale

    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue
    logger.warning("no UTF-8 locale: vLLM may fail to read non-ASCII files")


def _deliver(sink: EventSink, request_id: str, event: TokenEvent | EngineError) -> None:
    try:
        sink(event)
    except Exception:  # noqa: BLE001 - a broken sink must not stop other requests
        logger.exception("event sink of %s failed", request_id)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("vLLM engine call failed: %s", future.exception())


class VllmEngineHost:
    """The EngineHost shape for vLLM: `start()` returns the engine once it serves."""

    kind = "vllm"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._engine = VllmEngine(config)

    def start(self) -> VllmEngine:
        try:
            self._engine.start()
        except EngineError:
            raise
        except Exception as exc:
            self._engine.stop(timeout=10)
            raise EngineError(f"starting vLLM failed: {exc}") from exc
        return self._engine

    def stop(self, timeout: float | None = 10.0) -> None:
        self._engine.stop(timeout)

    def is_alive(self) -> bool:
        return self._engine.is_alive()
