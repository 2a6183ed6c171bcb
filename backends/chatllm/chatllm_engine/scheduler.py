"""Admission (first come, first served) and the token plan of each step.

Policy only: the scheduler sees items and token counts, never tensors.

- `FcfsScheduler` holds the waiting queue; `admit` pops, in arrival order, the requests that
  fit beside the running ones: under `max_num_seqs`, and with their context's KV within the
  budget (the engine's `fits` callback allocates it).
- `plan_tokens` splits one step's token budget (`max_num_batched_tokens`): every decoding row
  feeds its one token, and prefilling rows share what is left. The shortest remaining prompt
  goes first (so a short prompt is not stuck behind a long one), and the oldest prefilling
  row always gets a quarter of what is left (so a long prompt is never starved).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from .errors import EngineOverloaded

S = TypeVar("S")

OLDEST_SHARE = 4  # the oldest prefilling row gets at least 1/OLDEST_SHARE of the prefill budget


@dataclass(frozen=True)
class Waiting(Generic[S]):
    item: S
    num_tokens: int  # tokens to prefill (prompt, plus output so far when resumed)


class FcfsScheduler(Generic[S]):
    """Waiting queue + admission. Not thread-safe: the engine calls it under its lock."""

    def __init__(self, max_num_seqs: int, max_queue_size: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_queue_size = max_queue_size
        self._waiting: deque[Waiting[S]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def items(self) -> list[S]:
        return [w.item for w in self._waiting]

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

    def admit(self, running: int, fits: Callable[[S], bool]) -> list[S]:
        """Pop, in order, the waiting items that fit beside `running` rows.

        `fits(item)` reserves the item's KV and says whether that worked; admission stops at
        the first item that does not fit (first come, first served) or at max_num_seqs.
        """
        admitted: list[S] = []
        while self._waiting and running + len(admitted) < self.max_num_seqs:
            if not fits(self._waiting[0].item):
                break
            admitted.append(self._waiting.popleft().item)
        return admitted


def plan_tokens(pending: list[int], budget: int) -> list[int]:
    """Tokens each row feeds this step, given each row's `pending` tokens (in admission order).

    Rows with one pending token (decoding) always feed it. The rest of `budget` goes to the
    prefilling rows (pending > 1), at least 1/OLDEST_SHARE of `budget` however many rows
    decode: first that share to the oldest, then the shortest remaining first.
    """
    plan = [1 if p == 1 else 0 for p in pending]
    left = budget - sum(plan)
    prefilling = [i for i, p in enumerate(pending) if p > 1]
    if not prefilling:
        return plan
    left = max(left, budget // OLDEST_SHARE, 1)  # prefill progresses even behind many decoding rows
    oldest = prefilling[0]
    plan[oldest] = min(pending[oldest], max(1, left // OLDEST_SHARE)) if left > 0 else 0
    left -= plan[oldest]
    for i in sorted(prefilling, key=lambda i: pending[i] - plan[i]):
        extra = min(pending[i] - plan[i], left)
        if extra > 0:
            plan[i] += extra
            left -= extra
    return plan
