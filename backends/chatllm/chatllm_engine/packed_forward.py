"""One forward pass over every token of an engine step, packed with no padding.

A step feeds, per running sequence, a slice of its tokens (one for a decoding row, a chunk
of the prompt for a prefilling one). All of them go into the model as one [1, T] input with
each token's own position id, so embeddings, projections and MLPs run on T real tokens.
Attention is the only per-sequence part: `packed_attention` (registered with transformers'
`AttentionInterface` and selected on the model by `use_packed_attention`) writes each
segment's new keys/values into that sequence's buffer (kv_cache.SequenceKV) and runs
torch's SDPA over the sequence's own context. Called without a step layout (plain
`generate`), the registered function is transformers' SDPA, so the model still works as before.

A step's token count is rounded up to one of a few sizes (`padded_length`) with filler tokens
that no segment covers: oneDNN builds and caches a matmul kernel per input shape (1,024 in its
cache by default), and steps of every size from 1 to a few hundred tokens, times the model's
linear shapes, overflowed it, so that steps kept paying ~1 ms per layer shape for kernels
built again (`python scripts/probes/step_shapes.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .kv_cache import SequenceKV

ATTENTION_NAME = "chatllm_packed"
STEP_KWARG = "chatllm_step"
# A 4D mask placeholder: transformers returns a 4D mask as is, so no mask is built for a step.
_NO_MASK = torch.empty((1, 1, 0, 0), dtype=torch.bool)


@dataclass(frozen=True)
class Segment:
    """Tokens [start, end) of the packed input are positions [past, past + end - start) of `kv`."""

    kv: SequenceKV
    start: int
    end: int
    past: int

    @property
    def total(self) -> int:
        return self.past + self.end - self.start


@dataclass(frozen=True)
class StepLayout:
    segments: tuple[Segment, ...]


SHAPE_STEP = 16  # beyond SHAPE_STEP tokens, step sizes are multiples of it


def padded_length(tokens: int) -> int:
    """The step size `tokens` runs as: a power of two up to SHAPE_STEP, then a multiple of it
    (a small step is bound by reading the weights, so its filler rows cost next to nothing)."""
    if tokens <= SHAPE_STEP:
        return 1 << max(0, tokens - 1).bit_length()
    return -(-tokens // SHAPE_STEP) * SHAPE_STEP


def _causal_mask(n: int, total: int, groups: int, device: torch.device) -> torch.Tensor:
    """[groups * n, total] bool: query i (of the last n positions) sees keys <= its position."""
    rows = torch.arange(total - n, total, device=device)[:, None]
    mask = torch.arange(total, device=device)[None, :] <= rows
    return mask.repeat(groups, 1)


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: object) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> output [1, T, H, D]."""
    step = kwargs.get(STEP_KWARG)
    if not isinstance(step, StepLayout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)  # type: ignore[arg-type]  # kwargs: transformers' own
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    groups = heads // kv_heads
    new_kv = torch.stack((key[0], value[0]))  # [2, Hkv, T, D]: one copy per segment below, not two
    outs = []
    for seg in step.segments:
        n, total = seg.end - seg.start, seg.total
        cache = seg.kv.buffer[layer]  # [2, Hkv, capacity, D]
        cache[:, :, seg.past:total] = new_kv[:, :, seg.start:seg.end]
        # Grouped-query attention without repeating the cache: the `groups` query heads of
        # one KV head become `groups * n` queries of that head.
        q = query[0, :, seg.start:seg.end].reshape(kv_heads, groups * n, dim)
        mask = None if n == 1 else _causal_mask(n, total, groups, query.device)
        o = F.scaled_dot_product_attention(q[None], cache[0, None, :, :total], cache[1, None, :, :total],
                                           attn_mask=mask, scale=scaling)
        outs.append(o[0].reshape(heads, n, dim).transpose(0, 1))
    filler = query.shape[2] - step.segments[-1].end
    if filler:  # rows of padded_length's filler tokens: attend to nothing, never read
        outs.append(query.new_zeros(filler, heads, dim))
    return torch.cat(outs)[None], None


AttentionInterface.register(ATTENTION_NAME, packed_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def use_packed_attention(model: PreTrainedModel) -> None:
    """Select `packed_attention` on the model (plain calls still run transformers' SDPA)."""
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)


@torch.inference_mode()
def forward_step(model: PreTrainedModel, token_ids: list[int], positions: list[int], layout: StepLayout,
                 sample_at: list[int]) -> torch.Tensor:
    """Run one packed step; returns the logits [len(sample_at), V] at those token indices."""
    device = model.device
    filler = padded_length(len(token_ids)) - len(token_ids)
    ids = torch.tensor([token_ids + [0] * filler], dtype=torch.long, device=device)
    position_ids = torch.tensor([positions + [0] * filler], dtype=torch.long, device=device)
    keep = torch.tensor(sample_at, dtype=torch.long, device=device)
    out = model(input_ids=ids, position_ids=position_ids, attention_mask=_NO_MASK.to(device), use_cache=False,
                logits_to_keep=keep, **{STEP_KWARG: layout})
    for seg in layout.segments:
        seg.kv.length = seg.total
    logits: torch.Tensor = out.logits
    return logits[0]
