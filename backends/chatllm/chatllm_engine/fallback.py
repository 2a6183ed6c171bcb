"""The per-request path for models the batching engine cannot take.

Seq2seq models (T5: an encoder and a decoder) and causal LMs whose forward rejects our KV
cache (remote-code models with caches of their own) are served one request per worker
thread with transformers' own `generate`, at most `fallback_concurrency` at once, behind the
same interface as `LLMEngine` (`add_requests`, `abort`, `tokenize`, `stats`, `max_model_len`)
and the same `TokenEvent`s. Sampling, seeds and logprobs come from the engine's own sampler
(one logits processor picks the token, so `generate` itself runs greedy); stop strings and
incremental text from the engine's detokenizer, fed by a streamer.
"""

from __future__ import annotations

import copy
import logging
import queue
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          StoppingCriteria, StoppingCriteriaList)
from transformers.generation.streamers import BaseStreamer

from .adding import RequestAdder
from .chat import check_prompt_ids, eos_token_ids, prompt_token_ids
from .config import EngineConfig
from .engine import EngineStats, _check_sampling
from .errors import ContextTooLong, EngineDead, EngineError, EngineOverloaded, InvalidRequest
from .sampling import SequenceSampler, sample_next_tokens, token_logprobs
from .text import IncrementalDetokenizer, StopStringMatcher
from .types import EventSink, FinishReason, GenerationRequest, TokenEvent, TokenLogprobs

logger = logging.getLogger(__name__)

DEFAULT_SEQ2SEQ_LEN = 512  # decoder length when a seq2seq config names none


def is_seq2seq(config: Any) -> bool:
    """Whether a transformers model config describes an encoder-decoder model."""
    return bool(getattr(config, "is_encoder_decoder", False))


def load_for_fallback(config: EngineConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a seq2seq model (or any causal LM) and its tokenizer for `generate`."""
    from transformers import AutoTokenizer

    from .loader import resolve_dtype, resolve_model_path

    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    path = resolve_model_path(config.model_path)
    tokenizer_path = resolve_model_path(config.tokenizer_path) if config.tokenizer_path else path
    gguf: dict[str, Any] = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    model_config = AutoConfig.from_pretrained(path, trust_remote_code=config.trust_remote_code, **gguf)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=config.trust_remote_code,
                                              **(gguf if tokenizer_path == path else {}))
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(config.dtype, config.device),
                              "trust_remote_code": config.trust_remote_code, **gguf}
    if is_seq2seq(model_config):
        model = AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(config.device)
    model.eval()
    if config.chat_template:
        tokenizer.chat_template = config.chat_template
    return model, tokenizer


@dataclass
class _Job:
    """One request on the fallback path; `cancelled` is set by `abort` from any thread."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    stop_ids: frozenset[int]
    sink: EventSink
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # set on the worker thread once the final event went out

    @property
    def request_id(self) -> str:
        return self.request.request_id


class _PickToken(LogitsProcessor):
    """Chooses the next token with the engine's sampler and leaves only it possible, so a
    greedy `generate` follows it; records logprobs of the raw distribution when asked."""

    def __init__(self, sampler: SequenceSampler, decode: Callable[[int], str], top_n: int | None) -> None:
        self._sampler = sampler
        self._decode = decode
        self._top_n = top_n
        self.logprobs: list[TokenLogprobs] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        token = sample_next_tokens(scores[:1].float(), [self._sampler])[0]
        self._sampler.record(token)
        if self._top_n is not None:
            self.logprobs.extend(token_logprobs(scores[:1], [0], [token], [self._top_n], self._decode))
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced  # type: ignore[return-value]


class _Stop(StoppingCriteria):
    def __init__(self, done: Callable[[], bool]) -> None:
        self._done = done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._done(), dtype=torch.bool)  # type: ignore[return-value]


class _EventStreamer(BaseStreamer):
    """Receives generated token ids from `generate` and sends TokenEvents for one job."""

    def __init__(self, engine: FallbackEngine, job: _Job, picker: _PickToken, skip_first: bool) -> None:
        self._engine = engine
        self._job = job
        self._picker = picker
        self._skip_first = skip_first  # generate's first put() is the prompt (or decoder start)
        self._detok = IncrementalDetokenizer(engine.tokenizer, [] if engine.seq2seq else job.prompt_ids)
        self._stops = StopStringMatcher(job.request.sampling.stop)
        self._output: list[int] = []
        self._pending_ids: list[int] = []
        self._pending_text = ""
        self.stopped = False  # a stop string, stop token or max_tokens ended it

    def put(self, value: torch.Tensor) -> None:
        if self._skip_first:
            self._skip_first = False
            return
        for token in value.reshape(-1).tolist():
            if self.stopped:
                return
            self._add(int(token))

    def _add(self, token: int) -> None:
        job = self._job
        self._output.append(token)
        self._pending_ids.append(token)
        reason: FinishReason | None = None
        if token in job.stop_ids:
            reason = FinishReason.STOP
        else:
            self._pending_text += self._stops.feed(self._detok.add_token(token))
            if self._stops.stopped:
                reason = FinishReason.STOP
            elif len(self._output) >= job.max_tokens:
                reason = FinishReason.LENGTH
        if reason is not None:
            self.stopped = True
            if not self._stops.stopped:
                self._pending_text += self._stops.feed(self._detok.flush()) + self._stops.flush()
        first = len(self._output) == 1
        if reason is not None or first or len(self._pending_ids) >= self._engine.config.stream_interval:
            self._emit(reason)

    def _emit(self, reason: FinishReason | None) -> None:
        job = self._job
        wants = job.request.sampling.logprobs is not None
        logprobs: tuple[TokenLogprobs, ...] | None = None
        if wants:
            # Logprobs of text tokens only (a stop token has none), as LLMEngine sends them.
            count = len(self._pending_ids) - (1 if reason is FinishReason.STOP and self._pending_ids
                                              and self._pending_ids[-1] in job.stop_ids else 0)
            logprobs = tuple(self._picker.logprobs[:count])
            del self._picker.logprobs[:len(self._pending_ids)]
        event = TokenEvent(request_id=job.request_id, text=self._pending_text,
                           num_output_tokens=len(self._pending_ids), num_input_tokens=len(job.prompt_ids),
                           finish_reason=reason, token_ids=tuple(self._pending_ids), logprobs=logprobs)
        self._pending_ids, self._pending_text = [], ""
        self._engine._count_tokens(event.num_output_tokens)  # noqa: SLF001 - same module
        if reason is not None:
            job.finished = True
        self._engine._emit(job, event)  # noqa: SLF001

    def end(self) -> None:
        if self._job.finished:
            return
        reason = FinishReason.ABORT if self._job.cancelled.is_set() else FinishReason.LENGTH
        if reason is not FinishReason.ABORT:
            self._pending_text += self._stops.feed(self._detok.flush()) + self._stops.flush()
        self._emit(reason)


class FallbackEngine(RequestAdder):
    """Per-request `generate` on `fallback_concurrency` worker threads, FCFS behind them."""

    kind = "fallback"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.seq2seq = is_seq2seq(model.config)
        positions = getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 0)
        self.max_model_len = config.max_model_len or int(positions or (DEFAULT_SEQ2SEQ_LEN if self.seq2seq else 2048))
        self.stats = EngineStats()
        self._eos_ids = eos_token_ids(self.model, self.tokenizer)
        self._vocab_size = int(model.config.vocab_size)
        self._seeds = random.Random(config.seed)
        # _lock guards _jobs, _waiting, _running, _stopped and stats: shared by callers and workers.
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting = 0
        self._running = 0
        self._stopped = False
        self._workers = [threading.Thread(target=self._work, name=f"chatllm-fallback-{i}", daemon=True)
                         for i in range(config.fallback_concurrency)]
        for worker in self._workers:
            worker.start()

    # ---- caller side -------------------------------------------------------------------

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids; chat messages go through the model's own chat template."""
        return prompt_token_ids(self.tokenizer, request, self.config.tool_call_parser,
                                special_tokens_in_chat=self.seq2seq)

    def add_requests(self, items: list[tuple[GenerationRequest, EventSink]]) -> list[int | EngineError]:
        """Queue requests; per request its prompt token count or why it was refused."""
        results: list[int | EngineError] = []
        for request, sink in items:
            try:
                job = self._prepare(request, sink)
                with self._lock:
                    if self._stopped:
                        raise EngineDead("the engine has stopped")
                    if self._running + self._waiting >= self.config.fallback_concurrency + self.config.max_queue_size:
                        raise EngineOverloaded("too many requests are waiting; retry later")
                    self._jobs[job.request_id] = job
                    self._waiting += 1
                    self.stats.waiting = self._waiting
                self._queue.put(job)
                results.append(len(job.prompt_ids))
            except EngineError as exc:
                results.append(exc)
        return results

    def abort(self, request_id: str) -> None:
        """Stop a request: a queued one is dropped when a worker reaches it, a running one at
        its next token."""
        with self._lock:
            job = self._jobs.get(request_id)
        if job is not None:
            job.cancelled.set()

    def stop(self) -> None:
        """Cancel everything and end the workers (each finishes its current token first)."""
        with self._lock:
            self._stopped = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancelled.set()
        for _ in self._workers:
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        for worker in self._workers:
            worker.join(timeout)

    def is_alive(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def _prepare(self, request: GenerationRequest, sink: EventSink) -> _Job:
        params = request.sampling
        _check_sampling(params)
        if params.structured is not None:
            raise InvalidRequest("structured outputs (response_format, structured_outputs, tools with tool_choice "
                                 "required or named) are not available on this model's per-request engine")
        prompt_ids = check_prompt_ids(self.tokenize(request), self._vocab_size)
        # A seq2seq decoder starts afresh: the prompt only has to fit the encoder.
        room = self.max_model_len - (0 if self.seq2seq else len(prompt_ids))
        if self.seq2seq and len(prompt_ids) > self.max_model_len:
            room = 0
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens < 1 or max_tokens > room:
            raise ContextTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.")
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self._eos_ids)
        return _Job(request=request, prompt_ids=prompt_ids, max_tokens=max_tokens, stop_ids=stop_ids, sink=sink)

    # ---- worker threads ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._waiting -= 1
                self._running += 1
                self.stats.waiting, self.stats.running = self._waiting, self._running
                self.stats.max_batch_size = max(self.stats.max_batch_size, self._running)
            try:
                if job.cancelled.is_set():
                    self._emit(job, TokenEvent(request_id=job.request_id, text="", num_output_tokens=0,
                                               num_input_tokens=len(job.prompt_ids),
                                               finish_reason=FinishReason.ABORT))
                else:
                    self._generate(job)
            except Exception as exc:  # noqa: BLE001 - one failing request must not stop the worker
                logger.exception("generation of %s failed", job.request_id)
                if not job.finished:
                    self._emit(job, EngineDead(f"generation failed: {exc}"))
            finally:
                with self._lock:
                    self._jobs.pop(job.request_id, None)
                    self._running -= 1
                    self.stats.running = self._running

    def _generate(self, job: _Job) -> None:
        params = job.request.sampling
        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(self._seeds.getrandbits(63))
        sampler = SequenceSampler(params, [] if self.seq2seq else job.prompt_ids, generator, self.model.device)
        picker = _PickToken(sampler, lambda t: str(self.tokenizer.decode([t])), params.logprobs)
        streamer = _EventStreamer(self, job, picker, skip_first=True)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.model.device)
        eos = sorted(job.stop_ids)
        # The model's own generation config (decoder start token, ...) less every default that
        # would change which token is chosen: the picker alone decides.
        generation = copy.deepcopy(self.model.generation_config)
        generation.update(  # type: ignore[no-untyped-call]  # GenerationConfig.update is untyped
            do_sample=False, num_beams=1, max_length=None, max_new_tokens=job.max_tokens,
            min_new_tokens=params.min_tokens or None, eos_token_id=eos or None, pad_token_id=self._pad_id(eos),
            repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, bad_words_ids=None,
            suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
            forced_eos_token_id=None, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            self.model.generate(  # type: ignore[operator]  # GenerationMixin's, not declared on PreTrainedModel
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=generation,
                logits_processor=LogitsProcessorList([picker]), streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Stop(lambda: streamer.stopped or job.cancelled.is_set())]))
        streamer.end()

    def _pad_id(self, eos: list[int]) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.config, "pad_token_id", None)
        return int(pad) if pad is not None else (eos[0] if eos else 0)

    def _count_tokens(self, count: int) -> None:
        with self._lock:
            self.stats.output_tokens += count
            self.stats.steps += count

    def _emit(self, job: _Job, event: TokenEvent | EngineError) -> None:
        if isinstance(event, EngineError) or event.finished:
            job.finished = True
        try:
            job.sink(event)
        except Exception:  # noqa: BLE001 - a broken sink must not stop other requests
            logger.exception("event sink of %s failed", job.request_id)

