"""Constrained decoding: grammars compiled with xgrammar, one matcher per sequence.

`GrammarCache` turns a `StructuredOutput` (JSON schema, any JSON object, regex, choice list,
EBNF grammar) into a compiled grammar for this model's vocabulary. It runs on the thread
that prepares requests (never the engine thread) and keeps compiled grammars, so a schema
sent again costs nothing. `SequenceConstraint` is the per-sequence state: before sampling,
`mask_logits` sets the logits of every token the grammar forbids to -inf (only on rows that
carry a constraint: the others pay nothing); after sampling, `accept` advances the matcher,
and the sequence ends once the grammar is complete.

The engine's hooks (engine.py): `GrammarCache.compile` in request preparation,
`mask_logits` before sampling, `SequenceConstraint.accept` after it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import torch
import xgrammar as xgr
from chatllm_wire import StructuredOutput
from transformers import PreTrainedTokenizerBase

from .errors import InvalidRequest

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 256
"""Compiled grammars kept (least recently used dropped first)."""


def choice_grammar(choices: Sequence[str]) -> str:
    """An EBNF grammar whose language is exactly `choices`."""
    alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return f"root ::= {alternatives}"


class GrammarCache:
    """Compiles structured-output specs for one tokenizer; thread-safe, with an LRU cache.

    Args:
        tokenizer: the model's tokenizer.
        vocab_size: rows of the model's logits (may exceed the tokenizer's vocabulary).
        stop_token_ids: tokens that end a sequence (EOS); the only ones a complete grammar allows.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int,
                 stop_token_ids: Iterable[int]) -> None:
        self.vocab_size = vocab_size
        self._info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids) or None)
        self._compiler = xgr.GrammarCompiler(self._info, max_threads=1, cache_enabled=False)
        self._no_control_bytes = _bitmask_row([not any(b < 0x20 for b in token)
                                               for token in self._info.decoded_vocab], vocab_size)
        # The engine thread's bitmask buffer (mask_logits), grown to the largest batch seen.
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        # _lock guards _cache; callers are request-preparing threads (execute(), compile pool).
        self._lock = threading.Lock()
        self._cache: OrderedDict[StructuredOutput, xgr.CompiledGrammar] = OrderedDict()

    def bitmask(self, rows: int) -> torch.Tensor:
        """A [rows, words] bitmask for one step (reused: only the engine thread calls this)."""
        if self._bitmask.shape[0] < rows:
            self._bitmask = xgr.allocate_token_bitmask(rows, self.vocab_size)
        return self._bitmask[:rows]

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar of `spec`; raises InvalidRequest when it does not compile."""
        with self._lock:
            found = self._cache.get(spec)
            if found is not None:
                self._cache.move_to_end(spec)
                return found
        compiled = self._compile(spec)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        try:
            if spec.kind == "json":
                # Compact JSON: free whitespace lets a small model indent forever.
                return self._compiler.compile_json_schema(spec.value, any_whitespace=False, strict_mode=True)
            if spec.kind == "json_object":
                return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if spec.kind == "regex":
                return self._compiler.compile_regex(spec.value)
            if spec.kind == "choice":
                return self._compiler.compile_grammar(choice_grammar(spec.choices()))
            if spec.kind == "grammar":
                return self._compiler.compile_grammar(spec.value)
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with a reason
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidRequest(f"the {_LABELS.get(spec.kind, spec.kind)} does not compile: {reason}") from None
        raise InvalidRequest(f"unknown structured output kind {spec.kind!r}")

    def constraint(self, spec: StructuredOutput) -> SequenceConstraint:
        """A fresh matcher for one sequence (compiles, or reuses the cached grammar).

        Compact JSON never needs a raw control character (below 0x20), and JSON strings
        must not hold one; xgrammar 0.2.8 lets them into length-limited strings, so JSON
        rows also forbid every token that contains one.
        """
        extra = self._no_control_bytes if spec.kind in ("json", "json_object") else None
        return SequenceConstraint(xgr.GrammarMatcher(self.compile(spec)), self, extra)


def _bitmask_row(allowed: list[bool], vocab_size: int) -> npt.NDArray[np.int32]:
    """xgrammar's bitmask layout (bit j of word k: token 32k + j) of `allowed` tokens."""
    words = (vocab_size + 31) // 32
    bits = np.zeros(words * 32, dtype=np.uint64)
    bits[:min(len(allowed), vocab_size)] = np.asarray(allowed[:vocab_size], dtype=np.uint64)
    packed = (bits.reshape(words, 32) << np.arange(32, dtype=np.uint64)).sum(axis=1)
    row: npt.NDArray[np.int32] = packed.astype(np.uint32).view(np.int32)
    return row


class LazyGrammarCache:
    """A GrammarCache built on first use (reading the vocabulary takes a moment), so engines
    that never see a constrained request never pay for it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int,
                 stop_token_ids: Iterable[int]) -> None:
        self._args = (tokenizer, vocab_size, frozenset(stop_token_ids))
        self._lock = threading.Lock()  # guards _cache's creation
        self._cache: GrammarCache | None = None

    def get(self) -> GrammarCache:
        with self._lock:
            if self._cache is None:
                self._cache = GrammarCache(*self._args)
            return self._cache

    def constraint(self, spec: StructuredOutput) -> SequenceConstraint:
        return self.get().constraint(spec)


_LABELS = {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regex",
           "choice": "choice list", "grammar": "grammar"}


class SequenceConstraint:
    """The grammar state of one sequence; touched only by the engine thread."""

    def __init__(self, matcher: xgr.GrammarMatcher, cache: GrammarCache,
                 extra: npt.NDArray[np.int32] | None = None) -> None:
        self._matcher = matcher
        self.cache = cache
        self._extra = extra  # a bitmask row ANDed into every step's (tokens never allowed)
        self.violated = False

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)
        if self._extra is not None:
            # numpy, not torch: a one-row op must not wake torch's thread pool.
            words = bitmask[row].numpy()
            np.bitwise_and(words, self._extra, out=words)

    def accept(self, token_id: int) -> bool:
        """Advance by the sampled token; True when the grammar is now complete (or broken)."""
        if not self._matcher.accept_token(token_id):
            # Only when the token was not drawn from the masked row (e.g. a forced stop).
            self.violated = True
            return True
        return bool(self._matcher.is_terminated())

    @property
    def terminated(self) -> bool:
        return self.violated or bool(self._matcher.is_terminated())


def mask_logits(logits: torch.Tensor, constraints: Sequence[SequenceConstraint | None],
                argmax_rows: Sequence[bool] | None = None) -> None:
    """Set the logits of forbidden tokens to -inf, in place, on the rows with a constraint.

    `logits` is [B, V] with row i belonging to `constraints[i]`; unconstrained rows are not
    touched and nothing is done when no row is constrained. `argmax_rows[i]` says row i is
    decided by a plain argmax (greedy, no penalties, no logprobs): when its best token is
    allowed the mask cannot change the choice, so it is not applied to that row.
    """
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return
    cache = constraints[rows[0]].cache  # type: ignore[union-attr]
    vocab = min(logits.shape[-1], cache.vocab_size)
    # Rows of the bitmask follow the batch; only the constrained ones are filled and applied
    # (xgrammar's own CPU kernel, single-threaded: no torch op runs here on CPU).
    bitmask = cache.bitmask(logits.shape[0])
    for row in rows:
        constraint = constraints[row]
        assert constraint is not None
        constraint.fill(bitmask, row)
    if argmax_rows is not None:
        greedy = [r for r in rows if argmax_rows[r]]
        if greedy:
            best = logits[greedy, :vocab].argmax(-1).tolist()
            words = bitmask.numpy()
            allowed = {r for r, t in zip(greedy, best) if (int(words[r, t >> 5]) >> (t & 31)) & 1}
            rows = [r for r in rows if r not in allowed]
            if not rows:
                return
    if logits.device.type != "cpu":
        bitmask = bitmask.to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab,
                                    indices=None if len(rows) == logits.shape[0] else rows)
