"""Prefill and decode passes on the engine's KV layout, for probes that time single steps.

`prefill(model, prompts, prefix)` runs the prompts (after an optional already-computed
`Rows` prefix of one sequence, copied into each row as the prefix cache does) in one packed
pass; `decode(model, rows, tokens)` feeds one token per row. Both return the rows and the
last-position logits [B, V].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatllm_engine.engine import kv_cache_for
from chatllm_engine.kv_cache import SequenceKV
from chatllm_engine.packed_forward import Segment, StepLayout, forward_step, use_packed_attention


@dataclass
class Rows:
    kv: list[SequenceKV]


def _run(model: Any, rows: list[SequenceKV], feeds: list[list[int]]) -> torch.Tensor:
    ids: list[int] = []
    positions: list[int] = []
    segments, sample_at = [], []
    for kv, feed in zip(rows, feeds):
        start, past = len(ids), kv.length
        ids += feed
        positions += range(past, past + len(feed))
        segments.append(Segment(kv, start, len(ids), past))
        sample_at.append(len(ids) - 1)
    return forward_step(model, ids, positions, StepLayout(tuple(segments)), sample_at)


def prefill(model: Any, prompts: list[list[int]], prefix: Rows | None = None,
            room: int = 64) -> tuple[Rows, torch.Tensor]:
    use_packed_attention(model)
    cache = kv_cache_for(model, 1 << 30)
    done = prefix.kv[0].length if prefix else 0
    rows = []
    for prompt in prompts:
        kv = cache.allocate(done + len(prompt) + room)
        assert kv is not None
        if prefix:
            kv.buffer[:, :, :, :done] = prefix.kv[0].buffer[:, :, :, :done]
            kv.length = done
        rows.append(kv)
    return Rows(rows), _run(model, rows, [list(p) for p in prompts])


def decode(model: Any, rows: Rows, tokens: list[int]) -> tuple[Rows, torch.Tensor]:
    return rows, _run(model, rows.kv, [[t] for t in tokens])
