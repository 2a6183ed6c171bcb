"""The running batch: a left-padded KV cache that sequences join and leave between steps.

Three operations keep it continuous (after TGI's `from_pb` / `filter` / `concatenate`):
`prefill` builds a batch from new prompts in one forward pass, `concatenate` merges batches
(padding the shorter on the left), `filter` drops finished rows at once and trims padding
columns that no row needs any more. `decode` runs one token for every row.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [B, heads, L, dim]

# Columns a decode step adds to the KV buffers when they are full: appending then writes in
# place instead of copying the whole cache every step (as torch.cat in DynamicLayer does).
GROW_TOKENS = 16


class SlabLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A cache layer over preallocated [B, heads, capacity, dim] buffers, filled to `length`."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._key_buffer, self._value_buffer, self._length = keys, values, length
        self.device = keys.device
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._length + key_states.shape[-2]
        self._key_buffer[:, :, self._length:end] = key_states
        self._value_buffer[:, :, self._length:end] = value_states
        self._length = end
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values


def _cache_kwarg(model: PreTrainedModel) -> str:
    """transformers 5 names the cache argument `cache`; older releases `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class KVBatch:
    """Rows are sequences; columns are cache positions shared by all rows (left padding)."""

    kv: KV  # buffers [B, heads, capacity >= L, dim]; columns past L are free room
    attention_mask: torch.Tensor  # [B, L] int64, 0 on padding
    positions: torch.Tensor  # [B] position id of the next token of each row

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    @property
    def capacity(self) -> int:
        return int(self.kv[0][0].shape[2]) if self.kv else self.length

    @property
    def slots(self) -> int:
        """KV-cache slots held (padding and free room included): what the KV budget counts."""
        return self.size * self.capacity

    def filter(self, keep: list[int]) -> KVBatch:
        """The rows `keep`, with leading columns that are padding in every row removed."""
        index = torch.tensor(keep, dtype=torch.long, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() and mask.any() else 0
        end = self.length
        kv = [(k[:, :, first:end].index_select(0, index), v[:, :, first:end].index_select(0, index))
              for k, v in self.kv]
        return KVBatch(kv=kv, attention_mask=mask[:, first:], positions=self.positions.index_select(0, index))

    @staticmethod
    def concatenate(batches: list[KVBatch]) -> KVBatch:
        """One batch holding every row of `batches`, in order."""
        if len(batches) == 1:
            return batches[0]
        length = max(b.length for b in batches)
        masks, layers = [], []
        for b in batches:
            pad = length - b.length
            masks.append(torch.nn.functional.pad(b.attention_mask, (pad, 0)))
            layers.append([(torch.nn.functional.pad(k[:, :, :b.length], (0, 0, pad, 0)),
                            torch.nn.functional.pad(v[:, :, :b.length], (0, 0, pad, 0))) for k, v in b.kv])
        kv = [(torch.cat([ls[i][0] for ls in layers]), torch.cat([ls[i][1] for ls in layers]))
              for i in range(len(batches[0].kv))]
        return KVBatch(kv=kv, attention_mask=torch.cat(masks), positions=torch.cat([b.positions for b in batches]))


def _forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, KV]:
    kwargs = {_cache_kwarg(model): cache}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=1, **kwargs)
    new_cache = getattr(out, "cache", None) or out.past_key_values
    kv = [(layer.keys, layer.values) for layer in new_cache.layers]
    return out.logits[:, -1, :], kv


def _grown(kv: KV, length: int, capacity: int) -> KV:
    """Buffers with room for `capacity` columns holding the first `length` of `kv`."""
    grown = []
    for k, v in kv:
        shape = (k.shape[0], k.shape[1], capacity, k.shape[3])
        new_k, new_v = k.new_empty(shape), v.new_empty(shape)
        new_k[:, :, :length] = k[:, :, :length]
        new_v[:, :, :length] = v[:, :, :length]
        grown.append((new_k, new_v))
    return grown


@torch.inference_mode()
def prefill(model: PreTrainedModel, prompts: list[list[int]], prefix_kv: KV | None = None
            ) -> tuple[KVBatch, torch.Tensor]:
    """Run the prompts in one pass; returns the batch and last-position logits [B, V].

    With `prefix_kv` (a shared prefix of P tokens, [1 or B, ...] per layer) the prompts are
    the parts after it: columns are [prefix][padding][prompt], so every row still ends at
    the last column and positions continue from P.
    """
    device = model.device
    rows, length = len(prompts), max(len(p) for p in prompts)
    prefix_len = int(prefix_kv[0][0].shape[2]) if prefix_kv else 0
    ids = torch.zeros((rows, length), dtype=torch.long)
    mask = torch.zeros((rows, prefix_len + length), dtype=torch.long)
    mask[:, :prefix_len] = 1
    position_ids = torch.zeros((rows, length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        pad = length - len(prompt)
        ids[row, pad:] = torch.tensor(prompt, dtype=torch.long)
        mask[row, prefix_len + pad:] = 1
        position_ids[row, pad:] = torch.arange(prefix_len, prefix_len + len(prompt))
    ids, mask, position_ids = ids.to(device), mask.to(device), position_ids.to(device)
    cache = DynamicCache()
    if prefix_kv:
        cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                             for k, v in prefix_kv])
    logits, kv = _forward(model, ids, mask, position_ids, cache)
    positions = torch.tensor([prefix_len + len(p) for p in prompts], dtype=torch.long, device=device)
    return KVBatch(kv=kv, attention_mask=mask, positions=positions), logits


@torch.inference_mode()
def decode(model: PreTrainedModel, batch: KVBatch, tokens: list[int], max_capacity: int | None = None
           ) -> tuple[KVBatch, torch.Tensor]:
    """Feed one token per row; returns the grown batch and the next-token logits [B, V].

    The new keys/values are written into the batch's buffers; when they are full they grow
    by GROW_TOKENS columns, but never past `max_capacity` (the KV budget per row).
    """
    device = batch.attention_mask.device
    length = batch.length
    kv = batch.kv
    if length + 1 > batch.capacity:
        limit = max(length + 1, max_capacity or 0) if max_capacity is not None else length + GROW_TOKENS
        kv = _grown(kv, length, min(length + GROW_TOKENS, limit))
    ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
    mask = torch.nn.functional.pad(batch.attention_mask, (0, 1), value=1)
    cache = Cache(layers=[SlabLayer(k, v, length) for k, v in kv])
    logits, _ = _forward(model, ids, mask, batch.positions[:, None], cache)
    return KVBatch(kv=kv, attention_mask=mask, positions=batch.positions + 1), logits
