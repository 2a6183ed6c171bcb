"""First-come-first-served admission under a sequence cap and a KV-cache budget.

Policy only: the scheduler sees sequence ids and token counts, never tensors. The budget
counts KV slots of the left-padded batch (rows x padded length), which is what memory the
batch really holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from .errors import EngineOverloaded

S = TypeVar("S")

# Room (tokens per row) a batch must have left after an admission, so that a newcomer does
# not force a preemption a few steps later.
ADMISSION_HEADROOM = 16


@dataclass(frozen=True)
class Waiting(Generic[S]):
    item: S
    num_tokens: int  # tokens to prefill (prompt, plus output so far when resumed)


class FcfsScheduler(Generic[S]):
    """Waiting queue + admission. Not thread-safe: the engine calls it under its lock."""

    def __init__(self, max_num_seqs: int, max_queue_size: int, kv_cache_tokens: int,
                 max_prefill_tokens: int | None = None) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.max_queue_size = max_queue_size
        self.kv_cache_tokens = kv_cache_tokens
        self._waiting: deque[Waiting[S]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def enqueue(self, item: S, num_tokens: int, running: int) -> None:
        """Queue a new request; raises EngineOverloaded when the queue is full.

        Requests that free rows of the batch will take at the next step do not count
        against max_queue_size: it bounds only those that must wait behind max_num_seqs.
        """
        free_rows = max(0, self.max_num_seqs - running)
        if len(self._waiting) >= self.max_queue_size + free_rows:
            raise EngineOverloaded(
                f"the engine is at capacity ({self.max_num_seqs} running, {self.max_queue_size} waiting)")
        self._waiting.append(Waiting(item, num_tokens))

    def requeue_front(self, item: S, num_tokens: int) -> None:
        """Put a preempted sequence back at the head of the queue (no size limit)."""
        self._waiting.appendleft(Waiting(item, num_tokens))

    def remove(self, item: S) -> bool:
        for entry in self._waiting:
            if entry.item is item:
                self._waiting.remove(entry)
                return True
        return False

    def admit(self, running: int, padded_length: int, prefill_cost: Callable[[S], int] | None = None) -> list[S]:
        """Pop, in order, the waiting sequences that fit beside `running` rows of `padded_length`.

        Fits: under max_num_seqs, and rows x (padded length + 1 + headroom) within the budget
        (an empty batch only needs room for the next token); at most max_prefill_tokens
        tokens to compute in all (`prefill_cost`, default: every token), but always at least
        one sequence.
        """
        admitted: list[S] = []
        rows, length, prefill_tokens = running, padded_length, 0
        while self._waiting and rows < self.max_num_seqs:
            head = self._waiting[0]
            cost = prefill_cost(head.item) if prefill_cost is not None else head.num_tokens
            if admitted and self.max_prefill_tokens and prefill_tokens + cost > self.max_prefill_tokens:
                break
            new_length = max(length, head.num_tokens)
            headroom = ADMISSION_HEADROOM if rows else 0
            if (rows + 1) * (new_length + 1 + headroom) > self.kv_cache_tokens:
                break
            admitted.append(self._waiting.popleft().item)
            rows, length, prefill_tokens = rows + 1, new_length, prefill_tokens + cost
        return admitted

    def must_preempt(self, rows: int, padded_length: int) -> bool:
        """True when the next decode step would push the batch over the KV budget."""
        return rows > 1 and rows * (padded_length + 1) > self.kv_cache_tokens
