"""The continuous-batching generation engine: iteration-level scheduling over one KVBatch.

Each `step()`: drop aborted sequences, admit waiting ones (prefilled together in one pass
and appended to the running batch), preempt the newest rows if the KV budget would be
exceeded, run one decode step for every row, sample, emit text, and drop finished rows.
A step that admitted newcomers skips its decode, unless the step before skipped it too:
time to first token comes first, and running streams stall for at most one prefill pass.
Callers on other threads use `add_request` and `abort`; one engine thread calls `step()`
(via `run`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_wire import SAMPLING_PARAMS, WireError, check_sampling

from .batch import KVBatch, decode, prefill
from .chat import render_chat
from .config import EngineConfig
from .constraints import LazyGrammarCache, SequenceConstraint, mask_logits
from .errors import ContextTooLong, EngineDead, EngineError, InvalidRequest
from .sampling import SequenceSampler, sample_next_tokens, token_logprobs
from .prefix_cache import PrefixCache, PrefillGroup, row_prefix_kv
from .scheduler import FcfsScheduler
from .text import IncrementalDetokenizer, StopStringMatcher
from .types import FinishReason, GenerationRequest, SamplingParams, TokenEvent, TokenLogprobs

logger = logging.getLogger(__name__)

EventSink = Callable[[TokenEvent | EngineError], None]


@dataclass
class EngineStats:
    """Counters the adapter exports as metrics; written by the engine thread only."""

    steps: int = 0
    prefills: int = 0
    preemptions: int = 0
    output_tokens: int = 0
    max_batch_size: int = 0
    peak_kv_slots: int = 0
    kv_slots: int = 0
    running: int = 0
    waiting: int = 0


@dataclass
class Sequence:
    """One request in flight: its tokens, sampling and text state, and where events go."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    stop_ids: frozenset[int]
    sampler: SequenceSampler
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    sink: EventSink
    output_ids: list[int] = field(default_factory=list)
    pending_text: str = ""
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprobs] = field(default_factory=list)  # only when asked for
    next_token: int | None = None  # sampled, not yet fed to the model
    constraint: SequenceConstraint | None = None  # grammar state (structured outputs), engine thread only

    @property
    def request_id(self) -> str:
        return self.request.request_id


def _check_sampling(p: SamplingParams) -> None:
    """The ranges of the wire contract (chatllm_wire), for callers that build params directly."""
    try:
        check_sampling({name: getattr(p, name) for name in SAMPLING_PARAMS})
    except WireError as exc:
        raise InvalidRequest(exc.message) from None


class LLMEngine:
    """Serves many requests at once on one model instance."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_model_len = config.max_model_len or int(
            getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.stats = EngineStats()
        self._eos_ids = self._collect_eos_ids()
        self._vocab_size = int(model.config.vocab_size)
        self._generator = torch.Generator(device=model.device)
        self._generator.manual_seed(config.seed)
        # _lock guards _scheduler, _aborted, _stopped: shared with add_request/abort callers.
        self._lock = threading.Condition()
        self._scheduler: FcfsScheduler[Sequence] = FcfsScheduler(
            config.max_num_seqs, config.max_queue_size, config.kv_cache_tokens, config.max_prefill_tokens)
        self._aborted: set[str] = set()
        self._stopped = False
        self._num_running = 0  # mirror of len(self._running) for add_request
        # Engine-thread state only.
        self._running: list[Sequence] = []
        self._batch: KVBatch | None = None
        self._skipped_decode = False  # the last step prefilled newcomers and did not decode
        self._prefixes = PrefixCache(config.prefix_cache_tokens) if config.enable_prefix_caching else None
        # Structured outputs: compiled by whichever thread prepares a request (constraints.py).
        self._grammars = LazyGrammarCache(tokenizer, self._vocab_size, self._eos_ids)

    # ---- caller side -------------------------------------------------------------------

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids; chat messages go through the model's own chat template."""
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if request.messages is not None:
            if not request.messages:
                raise InvalidRequest("messages must not be empty")
            text = render_chat(self.tokenizer, request.messages, request.tools, request.chat_template_kwargs,
                               self.config.tool_call_parser)
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if request.prompt is None or request.prompt == "":
            raise InvalidRequest("the prompt is empty")
        return list(self.tokenizer(request.prompt).input_ids)

    def add_request(self, request: GenerationRequest, sink: EventSink) -> int:
        """Validate and queue a request; events go to `sink` (called on the engine thread).

        Returns the number of prompt tokens. Raises InvalidRequest, ContextTooLong or
        EngineOverloaded (nothing is queued then), EngineDead after a fatal failure.
        """
        result = self.add_requests([(request, sink)])[0]
        if isinstance(result, EngineError):
            raise result
        return result

    def add_requests(self, items: list[tuple[GenerationRequest, EventSink]]) -> list[int | EngineError]:
        """Queue requests that arrived together in one go, so one step admits (and prefills)
        them together. Returns, per request, its prompt token count or why it was refused."""
        results: list[int | EngineError] = []
        ready: list[tuple[int, Sequence]] = []
        for request, sink in items:
            try:
                seq = self._prepare(request, sink)
            except EngineError as exc:
                results.append(exc)
                continue
            ready.append((len(results), seq))
            results.append(len(seq.prompt_ids))
        with self._lock:
            for index, seq in ready:
                try:
                    if self._stopped:
                        raise EngineDead("the engine has stopped")
                    self._scheduler.enqueue(seq, len(seq.prompt_ids), self._num_running)
                except EngineError as exc:
                    results[index] = exc
            self._lock.notify()
        return results

    def _prepare(self, request: GenerationRequest, sink: EventSink) -> Sequence:
        """Validate and tokenize a request into a Sequence (no engine state is touched)."""
        params = request.sampling
        _check_sampling(params)
        prompt_ids = self.tokenize(request)
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty")
        if not all(0 <= t < self._vocab_size for t in prompt_ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {self._vocab_size})")
        limit = min(self.max_model_len, self.config.kv_cache_tokens)
        room = limit - len(prompt_ids)
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens < 1 or len(prompt_ids) + max_tokens > limit:
            which = ("context length" if limit == self.max_model_len else "KV-cache budget (kv_cache_tokens)")
            raise ContextTooLong(
                f"This model's maximum {which} is {limit} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.")
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self._eos_ids)
        seq = Sequence(
            request=request, prompt_ids=prompt_ids, max_tokens=max_tokens, stop_ids=stop_ids,
            sampler=SequenceSampler(params, prompt_ids, self._generator, self.model.device),
            detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids),
            stops=StopStringMatcher(params.stop), sink=sink)
        # ---- constrained decoding hook: compile (cached) off the engine thread ----
        if params.structured is not None:
            seq.constraint = self._grammars.constraint(params.structured)
        return seq

    def abort(self, request_id: str) -> None:
        """Stop a request (queued or running) at the next step; its slot frees then."""
        with self._lock:
            self._aborted.add(request_id)
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    # ---- engine thread -----------------------------------------------------------------

    def run(self) -> None:
        """Step until `stop()`; a failing step fails every request in flight (EngineDead)."""
        while True:
            with self._lock:
                while not self._stopped and not self._running and not len(self._scheduler) and not self._aborted:
                    self._lock.wait()
                if self._stopped:
                    break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the loop must report, not die silently
                logger.exception("engine step failed")
                self._fail_all(EngineDead(f"internal engine error: {exc}"))
        self._fail_all(EngineDead("the engine has stopped"))

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._running or len(self._scheduler))

    def step(self) -> None:
        """One iteration: aborts, admissions (+ prefill), preemption, one decode step."""
        with self._lock:
            aborted, self._aborted = self._aborted, set()
            for seq in [e for e in list(self._waiting_items()) if e.request_id in aborted]:
                self._scheduler.remove(seq)
                self._emit_abort(seq)
            if aborted:
                self._drop([i for i, s in enumerate(self._running) if s.request_id in aborted], abort=True)
            batch_len = self._batch.length if self._batch is not None else 0
            admitted = self._scheduler.admit(len(self._running), batch_len, self._prefill_cost)
            self.stats.waiting = len(self._scheduler)
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory on a long prompt
                # The running batch is untouched; only the sequences being admitted fail.
                logger.exception("prefill of %d sequence(s) failed", len(admitted))
                error = EngineDead(f"prefill failed: {exc}")
                for seq in admitted:
                    if not any(seq is r for r in self._running):
                        self._emit(seq, error)
        if not self._running:
            self._update_stats()
            return
        if admitted and not self._skipped_decode:
            # Prefill first: while newcomers arrive, they get their first token a decode pass
            # sooner; the running rows wait at most one such step (the next one decodes).
            self._skipped_decode = True
            self._update_stats()
            return
        self._skipped_decode = False
        self._preempt_if_needed()
        assert self._batch is not None
        tokens = [s.next_token for s in self._running]
        max_capacity = self.config.kv_cache_tokens // len(self._running)
        self._batch, logits = decode(self.model, self._batch, tokens, max_capacity)  # type: ignore[arg-type]
        self.stats.steps += 1
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(self._running))
        self._update_stats()
        self._sample_and_emit(self._running, logits)

    def _prefill_cost(self, seq: Sequence) -> int:
        """Tokens a prefill of `seq` computes: its prompt (and output so far) less a cached prefix."""
        tokens = seq.prompt_ids + seq.output_ids
        return len(tokens) - (self._prefixes.cached_length(tokens) if self._prefixes is not None else 0)

    def _waiting_items(self) -> list[Sequence]:
        return [w.item for w in self._scheduler._waiting]  # noqa: SLF001 - same package

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Prefill newly admitted sequences (sharing cached prefixes) and append them."""
        prompts = [s.prompt_ids + s.output_ids for s in seqs]
        groups = self._prefixes.plan(prompts) if self._prefixes is not None else [
            PrefillGroup(tuple(range(len(seqs))))]
        for group in groups:
            batch, logits = self._prefill_group(group, [prompts[i] for i in group.indices])
            self.stats.prefills += 1
            members = [seqs[i] for i in group.indices]
            self._batch = batch if self._batch is None else KVBatch.concatenate([self._batch, batch])
            self._running.extend(members)
            self._update_stats()
            self._sample_and_emit(members, logits, offset=len(self._running) - len(members))

    def _prefill_group(self, group: PrefillGroup, prompts: list[list[int]]) -> tuple[KVBatch, torch.Tensor]:
        if not group.prefix:
            batch, logits = prefill(self.model, prompts)
            first = prompts[0]
            if self._prefixes is not None and len(first) > 1:  # later requests may share its start
                self._prefixes.add(tuple(first[:-1]), row_prefix_kv(
                    batch.kv, 0, batch.length - len(first), len(first) - 1))
            return batch, logits
        assert self._prefixes is not None
        if not group.cached:
            shared, _ = prefill(self.model, [list(group.prefix)])
            self._prefixes.add(group.prefix, shared.kv)
        prefix_kv = self._prefixes.get(group.prefix)
        return prefill(self.model, [p[len(group.prefix):] for p in prompts], prefix_kv)

    def _preempt_if_needed(self) -> None:
        """Move the newest rows back to the queue until the next step fits the budget."""
        assert self._batch is not None
        while self._scheduler.must_preempt(len(self._running), self._batch.length):
            victim = self._running[-1]
            self._batch = self._batch.filter(list(range(len(self._running) - 1)))
            self._running.pop()
            self.stats.preemptions += 1
            with self._lock:
                self._scheduler.requeue_front(victim, len(victim.prompt_ids) + len(victim.output_ids))
            logger.info("preempted %s to stay within kv_cache_tokens", victim.request_id)

    def _sample_and_emit(self, seqs: list[Sequence], logits: torch.Tensor, offset: int = 0) -> None:
        """Sample one token for each of `seqs` (rows of logits), emit text, retire finished."""
        # ---- constrained decoding hook: forbidden tokens -> -inf on constrained rows only ----
        # (the grammar decides where a constrained row may end, so min_tokens does not apply)
        mask_logits(logits, [s.constraint for s in seqs],
                    [s.sampler.params.greedy and not s.sampler.needs_penalty and s.request.sampling.logprobs is None
                     for s in seqs])
        suppress = [sorted(s.stop_ids) if len(s.output_ids) < s.request.sampling.min_tokens
                    and s.constraint is None else [] for s in seqs]
        tokens = sample_next_tokens(logits, [s.sampler for s in seqs], suppress)
        logprobs = self._logprobs(seqs, logits, tokens)
        finished: list[int] = []
        for row, (seq, token) in enumerate(zip(seqs, tokens)):
            reason = self._advance(seq, token, logprobs.get(row))
            if reason is not None:
                finished.append(offset + row)
        self.stats.output_tokens += len(seqs)
        if finished:
            self._drop(finished, abort=False)

    def _logprobs(self, seqs: list[Sequence], logits: torch.Tensor, tokens: list[int]) -> dict[int, TokenLogprobs]:
        """Logprobs of the rows whose request asked for them (nothing to do for the others)."""
        rows = [i for i, s in enumerate(seqs) if s.request.sampling.logprobs is not None]
        if not rows:
            return {}
        top_n = [seqs[i].request.sampling.logprobs or 0 for i in rows]
        found = token_logprobs(logits, rows, tokens, top_n, lambda t: str(self.tokenizer.decode([t])))
        return dict(zip(rows, found))

    def _advance(self, seq: Sequence, token: int, logprobs: TokenLogprobs | None = None) -> FinishReason | None:
        """Append a token to `seq`, emit due text; returns the finish reason if it ended."""
        seq.sampler.record(token)
        seq.output_ids.append(token)
        seq.next_token = token
        seq.pending_ids.append(token)
        reason: FinishReason | None = None
        # ---- constrained decoding hook: advance the grammar; its completion ends the sequence ----
        complete = seq.constraint is not None and seq.constraint.accept(token)
        if token in seq.stop_ids:
            reason = FinishReason.STOP
        else:
            if logprobs is not None:
                seq.pending_logprobs.append(logprobs)
            seq.pending_text += seq.stops.feed(seq.detokenizer.add_token(token))
            if seq.stops.stopped or complete:
                reason = FinishReason.STOP
            elif len(seq.output_ids) >= seq.max_tokens:
                reason = FinishReason.LENGTH
        if reason is not None and not seq.stops.stopped:
            seq.pending_text += seq.stops.feed(seq.detokenizer.flush()) + seq.stops.flush()
        first = len(seq.output_ids) == 1
        if reason is not None or first or len(seq.pending_ids) >= self.config.stream_interval:
            self._emit(seq, TokenEvent(
                request_id=seq.request_id, text=seq.pending_text, num_output_tokens=len(seq.pending_ids),
                num_input_tokens=len(seq.prompt_ids), finish_reason=reason, token_ids=tuple(seq.pending_ids),
                logprobs=tuple(seq.pending_logprobs) if seq.request.sampling.logprobs is not None else None))
            seq.pending_text, seq.pending_ids = "", []
            if seq.pending_logprobs:
                seq.pending_logprobs = []
        return reason

    def _drop(self, rows: list[int], abort: bool) -> None:
        """Remove `rows` from the running batch at once (their KV slots free now)."""
        gone = set(rows)
        if abort:
            for i in sorted(gone):
                self._emit_abort(self._running[i])
        keep = [i for i in range(len(self._running)) if i not in gone]
        self._running = [self._running[i] for i in keep]
        self._batch = self._batch.filter(keep) if keep and self._batch is not None else None
        self._update_stats()

    def _emit(self, seq: Sequence, event: TokenEvent | EngineError) -> None:
        try:
            seq.sink(event)
        except Exception:  # noqa: BLE001 - a broken sink must not stop other requests
            logger.exception("event sink of %s failed", seq.request_id)

    def _emit_abort(self, seq: Sequence) -> None:
        self._emit(seq, TokenEvent(request_id=seq.request_id, text="", num_output_tokens=0,
                                   num_input_tokens=len(seq.prompt_ids), finish_reason=FinishReason.ABORT))

    def _fail_all(self, error: EngineError) -> None:
        with self._lock:
            waiting = self._waiting_items()
            for seq in waiting:
                self._scheduler.remove(seq)
        for seq in self._running + waiting:
            self._emit(seq, error)
        self._running, self._batch = [], None
        self._update_stats()

    def _update_stats(self) -> None:
        slots = self._batch.slots if self._batch is not None else 0
        self.stats.kv_slots = slots
        self.stats.peak_kv_slots = max(self.stats.peak_kv_slots, slots)
        self.stats.running = len(self._running)
        with self._lock:
            self._num_running = len(self._running)

    def _collect_eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        return frozenset(ids)
