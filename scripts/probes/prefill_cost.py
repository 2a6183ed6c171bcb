"""Cost of one prefill pass of n benchmark prompts, with and without their shared (cached)
prefix, and of one decode step at batch 1, 4, 16.

    python scripts/probes/prefill_cost.py
"""

from __future__ import annotations

import time

from _common import chat_prompts, load_default_model

import _steps as B
from chatllm_engine.prefix_cache import _common_prefix_length

model, tokenizer = load_default_model()
prompts = chat_prompts(tokenizer, 16)
shared_len = min(_common_prefix_length(prompts[0], p) for p in prompts[1:])
print("prompt tokens", [len(p) for p in prompts], "shared prefix", shared_len)
shared, _ = B.prefill(model, [prompts[0][:shared_len]])
for n in (1, 2, 4, 8, 16):
    start = time.perf_counter()
    B.prefill(model, [p[shared_len:] for p in prompts[:n]], shared)
    cached = time.perf_counter() - start
    start = time.perf_counter()
    B.prefill(model, prompts[:n])
    full = time.perf_counter() - start
    print(f"prefill n={n:2d}: after a cached prefix {cached * 1000:4.0f} ms, whole prompts {full * 1000:4.0f} ms")
for n in (1, 4, 16):
    batch, logits = B.prefill(model, prompts[:n])
    start = time.perf_counter()
    for _ in range(10):
        batch, logits = B.decode(model, batch, logits.argmax(-1).tolist())
    print(f"decode batch {n:2d}: {(time.perf_counter() - start) / 10 * 1000:.0f} ms per step")
import torch  # noqa: E402 - the peak fp32 matmul rate of this machine, for comparison

weight = torch.randn(1536, 576)
for rows in (16, 256, 1024):
    x = torch.randn(rows, 576)
    torch.nn.functional.linear(x, weight)
    start = time.perf_counter()
    for _ in range(50):
        torch.nn.functional.linear(x, weight)
    seconds = (time.perf_counter() - start) / 50
    print(f"fp32 matmul {rows}x576 @ 576x1536: {2 * rows * 576 * 1536 / seconds / 1e9:.0f} GFLOP/s")
