"""Reuse the KV cache of prompt prefixes that many requests share (a chat template's system
prompt, a few-shot preamble), so each prefill only computes what is new.

A small LRU list of prompt prefixes with their KV ([1, heads, P, dim] per layer). `plan`
splits the prompts of one prefill into groups that share a cached prefix, a common prefix
worth computing once now, or nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .batch import KV

MIN_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class PrefillGroup:
    """Prompts (by index) that share `prefix` (empty: no sharing)."""

    indices: tuple[int, ...]
    prefix: tuple[int, ...] = ()
    cached: bool = False  # the prefix KV is in the cache; otherwise compute it once first


def _common_prefix_length(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """LRU prefix -> KV, holding at most `max_tokens` prefix tokens in all."""

    def __init__(self, max_tokens: int, min_prefix: int = MIN_PREFIX_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.min_prefix = min_prefix
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.hits = 0

    @property
    def tokens(self) -> int:
        return sum(len(k) for k in self._entries)

    def get(self, prefix: tuple[int, ...]) -> KV:
        """The KV of `prefix`: an entry itself or the first columns of a longer one."""
        for key, kv in self._entries.items():
            if key[:len(prefix)] == prefix:
                self._entries.move_to_end(key)
                return kv if len(key) == len(prefix) else [(k[:, :, :len(prefix)], v[:, :, :len(prefix)])
                                                          for k, v in kv]
        raise KeyError("prefix not cached")

    def add(self, prefix: tuple[int, ...], kv: KV) -> None:
        if len(prefix) < self.min_prefix or len(prefix) > self.max_tokens:
            return
        self._entries[prefix] = [(k.detach(), v.detach()) for k, v in kv]
        self._entries.move_to_end(prefix)
        while self.tokens > self.max_tokens:
            self._entries.popitem(last=False)

    def cached_length(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` a prefill could take from the cache."""
        return len(self._best_cached(prompt))

    def _best_cached(self, prompt: list[int]) -> tuple[int, ...]:
        best: tuple[int, ...] = ()
        for key in self._entries:
            n = min(_common_prefix_length(key, prompt), len(prompt) - 1)  # keep >= 1 token to run
            if n >= self.min_prefix and n > len(best):
                best = key[:n]
        return best

    def plan(self, prompts: list[list[int]]) -> list[PrefillGroup]:
        """Group prompts by the prefix they can share."""
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        loose: list[int] = []
        for i, prompt in enumerate(prompts):
            prefix = self._best_cached(prompt)
            if prefix:
                by_prefix.setdefault(prefix, []).append(i)
                self.hits += 1
            else:
                loose.append(i)
        groups = [PrefillGroup(tuple(ix), prefix, cached=True) for prefix, ix in by_prefix.items()]
        buckets: dict[tuple[int, ...], list[int]] = {}  # loose prompts by their first tokens
        for i in loose:
            buckets.setdefault(tuple(prompts[i][:self.min_prefix]), []).append(i)
        unshared: list[int] = []
        for members in buckets.values():
            first = prompts[members[0]]
            shared = min(min(_common_prefix_length(first, prompts[i]), len(prompts[i]) - 1) for i in members)
            if len(members) >= 2 and shared >= self.min_prefix:
                groups.append(PrefillGroup(tuple(members), tuple(first[:shared]), cached=False))
            else:
                unshared.extend(members)
        if unshared:
            groups.append(PrefillGroup(tuple(sorted(unshared))))
        return groups


def row_prefix_kv(kv: KV, row: int, start: int, length: int) -> KV:
    """Columns [start, start + length) of one row of a batch's KV, as a [1, ...] prefix KV."""
    return [(k[row:row + 1, :, start:start + length].clone(), v[row:row + 1, :, start:start + length].clone())
            for k, v in kv]
