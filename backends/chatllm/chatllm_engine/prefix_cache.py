"""Reuse the KV cache of prompt prefixes that many requests share (a chat template's system
prompt, a few-shot preamble, the earlier turns of a conversation), so a prefill only computes
what is new.

A small LRU of token sequences with their KV ([layers, 2, kv_heads, P, head_dim], a copy of
what the sequence's own buffer held when its prompt was done). A new prompt takes the longest
start it shares with any entry (at least MIN_PREFIX_TOKENS, and never its last token, which
must run to give the first logits).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

MIN_PREFIX_TOKENS = 16


def _common_prefix_length(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """LRU token sequence -> KV, holding at most `max_tokens` tokens in all."""

    def __init__(self, max_tokens: int, min_prefix: int = MIN_PREFIX_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.min_prefix = min_prefix
        self._entries: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._tokens = 0
        self.hits = 0

    @property
    def tokens(self) -> int:
        return self._tokens

    def add(self, tokens: tuple[int, ...], kv: torch.Tensor) -> None:
        """Keep `kv` (positions on dim 3) as the cache of `tokens`; it must not alias a live buffer."""
        if len(tokens) < self.min_prefix or len(tokens) > self.max_tokens or tokens in self._entries:
            return
        self._entries[tokens] = kv
        self._tokens += len(tokens)
        while self._tokens > self.max_tokens:
            key, _ = self._entries.popitem(last=False)
            self._tokens -= len(key)

    def lookup(self, prompt: list[int]) -> tuple[int, torch.Tensor | None]:
        """The longest cached start of `prompt`: its length and KV (a view), or (0, None)."""
        best_len, best_key = 0, None
        for key in self._entries:
            if key[0] != prompt[0]:
                continue
            n = min(_common_prefix_length(key, prompt), len(prompt) - 1)  # keep >= 1 token to run
            if n >= self.min_prefix and n > best_len:
                best_len, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best_len, self._entries[best_key][:, :, :, :best_len]

    def cached_length(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` a prefill could take from the cache."""
        best = 0
        for key in self._entries:
            n = min(_common_prefix_length(key, prompt), len(prompt) - 1)
            if n >= self.min_prefix:
                best = max(best, n)
        return best
