"""nn.Linear (MKL) against oneDNN-reordered weights (chatllm_engine/packed_linear.py) on the
default model: resident memory around packing, prefill passes after the cached system prompt,
decode steps at batch 1, 16 and 64, whether 24 greedy steps of 4 prompts give the same tokens, and the benchmark's
static-batch ceiling (`model.generate`, C=16, 64 tokens) on either. The two variants
alternate, so that the machine's noise hits both.

    python scripts/probes/packed_linear.py
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from _common import chat_prompts, load_default_model

import _steps as B
from chatllm_engine.packed_linear import pack_linear_layers
from chatllm_engine.prefix_cache import _common_prefix_length

def resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


plain, tokenizer = load_default_model(pack_cpu_weights=False)
packed = copy.deepcopy(plain)
before = resident_mib()
print("packed layers:", pack_linear_layers(packed))
print(f"resident memory: {before:.0f} MiB with two plain copies, {resident_mib():.0f} MiB once one is packed")
prompts = chat_prompts(tokenizer, 64)
shared_len = min(_common_prefix_length(prompts[0], p) for p in prompts[1:])


def best_ms(run: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def measure(model: Any) -> dict[str, float]:
    shared, _ = B.prefill(model, [prompts[0][:shared_len]])
    out = {}
    for n in (1, 9):
        out[f"prefill {n}"] = best_ms(lambda: B.prefill(model, [p[shared_len:] for p in prompts[:n]], shared), 4)
    for n in (1, 16, 64):
        batch, logits = B.prefill(model, prompts[:n])
        tokens = logits.argmax(-1).tolist()
        out[f"decode {n}"] = best_ms(lambda: B.decode(model, batch, tokens), 6)
    return out


def greedy_tokens(model: Any) -> list[list[int]]:
    batch, logits = B.prefill(model, prompts[:4])
    steps = []
    for _ in range(24):
        steps.append(logits.argmax(-1).tolist())
        batch, logits = B.decode(model, batch, steps[-1])
    return steps


for round_ in range(3):
    a, b = measure(plain), measure(packed)
    print(f"round {round_ + 1}: " + ", ".join(
        f"{k} {a[k]:.0f} -> {b[k]:.0f} ms ({a[k] / b[k]:.2f}x)" for k in a), flush=True)
print("same greedy tokens:", greedy_tokens(plain) == greedy_tokens(packed))

from loadtest.bench import run_ceiling  # noqa: E402 - after the model is loaded

run_ceiling(plain, tokenizer, 2, 4), run_ceiling(packed, tokenizer, 2, 4)  # warm-up
for round_ in range(2):
    a, b = run_ceiling(plain, tokenizer, 16, 64), run_ceiling(packed, tokenizer, 16, 64)
    print(f"ceiling C=16 round {round_ + 1}: model.generate {a.tokens_per_s:.0f} tok/s on nn.Linear, "
          f"{b.tokens_per_s:.0f} on packed weights ({b.tokens_per_s / a.tokens_per_s:.2f}x)", flush=True)
