"""The KV cache: one buffer per sequence, sized to its own context, under one token budget.

Each running sequence owns a tensor [layers, 2 (keys, values), kv_heads, capacity, head_dim]
that holds its context and nothing else: a row never pays for a longer neighbour (as in a
left-padded batch), and joining or leaving the batch copies nothing. Capacity grows in
blocks of BLOCK_TOKENS (by a quarter of the current size at least, so a long answer copies
its own cache a few times, not every block). The budget (`kv_cache_tokens`) counts the
capacity every sequence holds, which is the memory really allocated.
"""

from __future__ import annotations

import torch

BLOCK_TOKENS = 16  # allocation unit of a sequence's capacity
GROWTH = 4  # a full buffer grows by at least 1/GROWTH of its capacity


def round_up(tokens: int, block: int = BLOCK_TOKENS) -> int:
    return -(-tokens // block) * block


class SequenceKV:
    """The keys and values of one sequence: `length` positions filled, room for `capacity`."""

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer = buffer  # [layers, 2, kv_heads, capacity, head_dim]
        self.length = 0

    @property
    def capacity(self) -> int:
        return int(self.buffer.shape[3])


class KVCache:
    """Allocates sequences' buffers within `budget_tokens` of capacity in all.

    Owned by the engine thread; not thread-safe.
    """

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, budget_tokens: int) -> None:
        self.shape = (num_layers, 2, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.budget_tokens = budget_tokens
        self.used_tokens = 0

    @property
    def free_tokens(self) -> int:
        return self.budget_tokens - self.used_tokens

    def bytes_per_token(self) -> int:
        layers, two, heads, dim = self.shape
        return layers * two * heads * dim * torch.empty((), dtype=self.dtype).element_size()

    def _empty(self, capacity: int) -> torch.Tensor:
        layers, two, heads, dim = self.shape
        return torch.empty((layers, two, heads, capacity, dim), dtype=self.dtype, device=self.device)

    def _capacity_for(self, need: int, current: int = 0) -> int | None:
        """A capacity >= need within the budget (rounded to blocks where room allows)."""
        room = self.free_tokens + current
        if need > room:
            return None
        wanted = round_up(max(need, current + max(BLOCK_TOKENS, current // GROWTH)))
        return min(wanted, room) if current else min(round_up(need), room)

    def allocate(self, tokens: int) -> SequenceKV | None:
        """A buffer with room for `tokens` positions, or None when the budget has no room."""
        capacity = self._capacity_for(tokens)
        if capacity is None:
            return None
        self.used_tokens += capacity
        return SequenceKV(self._empty(capacity))

    def ensure(self, kv: SequenceKV, tokens: int) -> bool:
        """Make room for `tokens` positions in `kv` (copying its own filled part when it grows);
        False when the budget has no room for that."""
        if tokens <= kv.capacity:
            return True
        capacity = self._capacity_for(tokens, kv.capacity)
        if capacity is None:
            return False
        grown = self._empty(capacity)
        grown[:, :, :, :kv.length] = kv.buffer[:, :, :, :kv.length]
        self.used_tokens += capacity - kv.capacity
        kv.buffer = grown
        return True

    def free(self, kv: SequenceKV) -> None:
        self.used_tokens -= kv.capacity
        kv.buffer = kv.buffer[:, :, :, :0]
        kv.length = 0
