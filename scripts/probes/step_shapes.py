"""Why step sizes are rounded (packed_forward.padded_length): oneDNN's kernel cache per shape.

Runs SmolLM2's four linear shapes, packed as the engine packs them, at every step size from
1 to 300 tokens, three times over. With oneDNN's default cache (1,024 kernels) the 1,200
shapes never stay cached, so every pass costs what the first did; the same sizes rounded by
`padded_length` are built once. Times are this thread's CPU seconds (robust to a busy machine).

    python scripts/probes/step_shapes.py [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import ROOT  # noqa: F401 - puts the engine on the path
from chatllm_engine.packed_forward import padded_length

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # (out, in) of SmolLM2-135M's linears


def sweep(weights: list[torch.Tensor], sizes: list[int], dtype: torch.dtype) -> float:
    start = time.thread_time()
    for rows in sizes:
        for weight, (_, width) in zip(weights, SHAPES):
            torch.ops.mkldnn._linear_pointwise(torch.randn(rows, width).to(dtype), weight, None, "none", [], "")
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    dtype = getattr(torch, parser.parse_args().dtype)
    torch.set_num_threads(1)
    weights = [torch.ops.mkldnn._reorder_linear_weight(torch.randn(*shape).to(dtype), 16) for shape in SHAPES]
    sizes = list(range(1, 301))
    for name, run in (("every size", sizes), ("padded_length", [padded_length(n) for n in sizes])):
        passes = [sweep(weights, run, dtype) for _ in range(3)]
        times = ", ".join(f"pass {i + 1} {t:.2f} s" for i, t in enumerate(passes))
        print(f"{name:14} {len(set(run)):3} shapes: {times}")


if __name__ == "__main__":
    main()
