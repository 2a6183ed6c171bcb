"""The continuous-batching generation engine: iteration-level scheduling, one packed forward per step.

Each `step()`: drop aborted sequences (their KV frees at once), admit waiting ones whose
context fits the KV budget (kv_cache.py; a cached prompt prefix is copied in, not
recomputed), plan the step's tokens under `max_num_batched_tokens` (scheduler.plan_tokens:
each decoding row's next token plus chunks of the prompts being prefilled), preempt the
newest rows if the budget cannot hold them, run all those tokens in one forward pass
(packed_forward.py), sample for the rows that reached the end of their context, emit text,
and drop finished rows. A long prompt is prefilled over several steps while the running
streams keep decoding in the same passes.
Callers on other threads use `add_request` and `abort`; one engine thread calls `step()`
(via `run`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_wire import SAMPLING_PARAMS, WireError, check_sampling

from .adding import RequestAdder
from .chat import check_prompt_ids, eos_token_ids, prompt_token_ids
from .config import EngineConfig
from .constraints import LazyGrammarCache, SequenceConstraint, mask_logits
from .errors import ContextTooLong, EngineDead, EngineError, InvalidRequest
from .sampling import SequenceSampler, sample_next_tokens, token_logprobs
from .kv_cache import KVCache, SequenceKV
from .packed_forward import Segment, StepLayout, forward_step, use_packed_attention
from .prefix_cache import PrefixCache
from .scheduler import FcfsScheduler, plan_tokens
from .text import IncrementalDetokenizer, StopStringMatcher
from .types import EventSink, FinishReason, GenerationRequest, SamplingParams, TokenEvent, TokenLogprobs

logger = logging.getLogger(__name__)

# Room (tokens) the budget must keep beside a newcomer while other rows run, so that an
# admission does not force a preemption a few steps later.
ADMISSION_HEADROOM = 16

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
    tokens: list[int] = field(default_factory=list)  # prompt + output: the context
    kv: SequenceKV | None = None  # while running
    prompt_done: bool = False  # the prompt's KV is complete (offered to the prefix cache)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def request_id(self) -> str:
        return self.request.request_id


def _check_sampling(p: SamplingParams) -> None:
    """The ranges of the wire contract (chatllm_wire), for callers that build params directly."""
    try:
        check_sampling({name: getattr(p, name) for name in SAMPLING_PARAMS})
    except WireError as exc:
        raise InvalidRequest(exc.message) from None


class LLMEngine(RequestAdder):
    """Serves many requests at once on one model instance."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_model_len = config.max_model_len or int(
            getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.stats = EngineStats()
        self._eos_ids = eos_token_ids(self.model, self.tokenizer)
        self._vocab_size = int(model.config.vocab_size)
        self._generator = torch.Generator(device=model.device)
        self._generator.manual_seed(config.seed)
        # _lock guards _scheduler, _aborted, _stopped: shared with add_request/abort callers.
        self._lock = threading.Condition()
        self._scheduler: FcfsScheduler[Sequence] = FcfsScheduler(config.max_num_seqs, config.max_queue_size)
        self._aborted: set[str] = set()
        self._stopped = False
        self._num_running = 0  # mirror of len(self._running) for add_request
        # Engine-thread state only.
        self._running: list[Sequence] = []  # in admission order
        self._kv = kv_cache_for(model, config.kv_cache_tokens)
        use_packed_attention(model)
        self._prefixes = PrefixCache(config.prefix_cache_tokens) if config.enable_prefix_caching else None
        # Structured outputs: compiled by whichever thread prepares a request (constraints.py).
        self._grammars = LazyGrammarCache(tokenizer, self._vocab_size, self._eos_ids)

    # ---- caller side -------------------------------------------------------------------

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids; chat messages go through the model's own chat template."""
        return prompt_token_ids(self.tokenizer, request, self.config.tool_call_parser)

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
        prompt_ids = check_prompt_ids(self.tokenize(request), self._vocab_size)
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
            stops=StopStringMatcher(params.stop), sink=sink, tokens=list(prompt_ids))
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
        """One iteration: aborts, admissions, then one packed forward over every running row's
        next tokens (a decoding row's one token, a prefilling row's prompt chunk) and sampling
        for the rows whose fed tokens reach the end of what they know."""
        with self._lock:
            aborted, self._aborted = self._aborted, set()
            for seq in [s for s in self._scheduler.items() if s.request_id in aborted]:
                self._scheduler.remove(seq)
                self._emit_abort(seq)
            if aborted:
                self._drop([s for s in self._running if s.request_id in aborted], abort=True)
            admitted = self._scheduler.admit(len(self._running), self._reserve)
            self.stats.waiting = len(self._scheduler)
        self._running.extend(admitted)
        self.stats.prefills += len(admitted)
        if not self._running:
            self._update_stats()
            return
        plan = self._plan()
        if not plan:
            self._update_stats()
            return
        ids: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        sample_at: list[int] = []
        sampled: list[Sequence] = []
        for seq, count in plan:
            kv = seq.kv
            assert kv is not None
            start, past = len(ids), kv.length
            ids.extend(seq.tokens[past:past + count])
            positions.extend(range(past, past + count))
            segments.append(Segment(kv, start, len(ids), past))
            if past + count == seq.num_tokens:
                sample_at.append(len(ids) - 1)
                sampled.append(seq)
        logits = forward_step(self.model, ids, positions, StepLayout(tuple(segments)), sample_at)
        self.stats.steps += 1
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(plan))
        for seq in sampled:
            if not seq.prompt_done:
                seq.prompt_done = True
                self._cache_prefix(seq)
        self._update_stats()
        if sampled:
            self._sample_and_emit(sampled, logits)

    def _reserve(self, seq: Sequence) -> bool:
        """Allocate `seq`'s KV (its whole context, starting from a cached prefix if any);
        False when the budget has no room for it now (then it stays queued)."""
        cached, prefix_kv = self._prefixes.lookup(seq.tokens) if self._prefixes is not None else (0, None)
        headroom = ADMISSION_HEADROOM if self._running else 0
        if seq.num_tokens + 1 + headroom > self._kv.free_tokens:
            return False
        kv = self._kv.allocate(seq.num_tokens + 1)
        if kv is None:
            return False
        if prefix_kv is not None:
            kv.buffer[:, :, :, :cached] = prefix_kv
            kv.length = cached
            assert self._prefixes is not None
            self._prefixes.hits += 1
        seq.kv = kv
        seq.prompt_done = False
        return True

    def _plan(self) -> list[tuple[Sequence, int]]:
        """This step's (sequence, tokens to feed), with the KV for them reserved; rows that no
        longer fit the budget are preempted (newest first) back to the queue."""
        while True:
            pending = [s.num_tokens - s.kv.length for s in self._running]  # type: ignore[union-attr]
            counts = plan_tokens(pending, self.config.max_num_batched_tokens)
            plan = [(s, c) for s, c in zip(self._running, counts) if c > 0]
            short = next((s for s, c in plan if not self._kv.ensure(s.kv, s.kv.length + c)), None)  # type: ignore[arg-type,union-attr]
            if short is None:
                return plan
            self._preempt(self._running[-1])
            if not self._running:
                return []

    def _preempt(self, victim: Sequence) -> None:
        """Free a row's KV and put it back at the head of the queue (it recomputes later)."""
        self._running.remove(victim)
        self._release(victim)
        self.stats.preemptions += 1
        with self._lock:
            self._scheduler.requeue_front(victim, victim.num_tokens)
        logger.info("preempted %s to stay within kv_cache_tokens", victim.request_id)

    def _release(self, seq: Sequence) -> None:
        if seq.kv is not None:
            self._kv.free(seq.kv)
            seq.kv = None

    def _cache_prefix(self, seq: Sequence) -> None:
        """Offer the prompt's KV to the prefix cache (a copy: the row's buffer lives on)."""
        if self._prefixes is None or seq.kv is None:
            return
        n = len(seq.prompt_ids) - 1
        if self._prefixes.min_prefix <= n <= self._prefixes.max_tokens:
            self._prefixes.add(tuple(seq.prompt_ids[:n]), seq.kv.buffer[:, :, :, :n].clone())

    def _sample_and_emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
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
        finished: list[Sequence] = []
        for row, (seq, token) in enumerate(zip(seqs, tokens)):
            reason = self._advance(seq, token, logprobs.get(row))
            if reason is not None:
                finished.append(seq)
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
        seq.tokens.append(token)
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

    def _drop(self, seqs: list[Sequence], abort: bool) -> None:
        """Remove `seqs` from the running rows; their KV frees now."""
        gone = {id(s) for s in seqs}
        for seq in seqs:
            if abort:
                self._emit_abort(seq)
            self._release(seq)
        self._running = [s for s in self._running if id(s) not in gone]
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
            waiting = self._scheduler.items()
            for seq in waiting:
                self._scheduler.remove(seq)
        for seq in self._running + waiting:
            self._release(seq)
            self._emit(seq, error)
        self._running = []
        self._update_stats()

    def _update_stats(self) -> None:
        slots = self._kv.used_tokens
        self.stats.kv_slots = slots
        self.stats.peak_kv_slots = max(self.stats.peak_kv_slots, slots)
        self.stats.running = len(self._running)
        with self._lock:
            self._num_running = len(self._running)

def kv_cache_for(model: PreTrainedModel, budget_tokens: int) -> KVCache:
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    param = next(model.parameters())
    return KVCache(int(cfg.num_hidden_layers), kv_heads, head_dim, param.dtype, param.device, budget_tokens)
