"""Linear layers on CPU (fp32, and bf16 where the CPU computes it) with weights reordered
once for oneDNN's matmul kernels.

Why: `nn.Linear` on CPU calls MKL's sgemm, which reads the weight in its plain row-major
layout on every call. oneDNN (bundled with torch, and what `torch.compile` uses for CPU
linears after freezing) can reorder a weight once into the blocked layout its kernels
stream from. On the 2-core development machine SmolLM2-135M's decode steps at batch 1 and
16 ran 1.3-1.4x as fast and its prefill 1.2x, with the same greedy tokens
(`python scripts/probes/packed_linear.py`). Decoding is mostly reading weights, so the
gain is largest where the batch is small. In bf16 the plain path is worse still at decode
batch sizes (a 16-row step of SmolLM2 ran slower in bf16 than in fp32 before packing), so
bf16 layers are packed too on CPUs with native bf16 (avx512_bf16, AMX).

The ops are torch's own (`torch.ops.mkldnn`), but private: `pack_linear_layers` checks
them against `F.linear` once and leaves the model untouched if they are missing or differ.
"""

from __future__ import annotations

import ctypes
import gc
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Batch size the reordered layout is tuned for. Measured per layer shape at 1-144 rows:
# 16 and 128 were equally good from 4 rows up, 1 was slower there.
BATCH_HINT = 16


class PackedLinear(nn.Module):
    """`y = x @ W.T + b` with W held in oneDNN's reordered layout (inference only)."""

    def __init__(self, linear: nn.Linear, batch_hint: int = BATCH_HINT) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y: torch.Tensor = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# How close the packed op must come to F.linear on a random input, per weight dtype (bf16
# keeps 8 bits of mantissa; the two paths may add in a different order).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _packable(module: nn.Module, dtypes: tuple[torch.dtype, ...]) -> bool:
    return (type(module) is nn.Linear and module.weight.device.type == "cpu"
            and module.weight.dtype in dtypes)


def _agrees(linear: nn.Linear) -> bool:
    """Whether the packed op computes what F.linear does, on a random input."""
    try:
        packed = PackedLinear(linear)
        x = torch.randn(3, linear.in_features, dtype=linear.weight.dtype)
        tolerance = TOLERANCE[linear.weight.dtype]
        with torch.no_grad():
            return bool(torch.allclose(packed(x), nn.functional.linear(x, linear.weight, linear.bias),
                                       rtol=tolerance, atol=tolerance))
    except (AttributeError, RuntimeError) as exc:  # an op missing or refused by this torch build
        logger.warning("oneDNN linear unavailable (%s); keeping nn.Linear", exc)
        return False


def pack_linear_layers(model: nn.Module, bf16: bool = False) -> int:
    """Replace every fp32 CPU `nn.Linear` in `model` (and bf16 ones when `bf16`: only where the
    CPU computes bf16 natively) by a PackedLinear; returns how many.

    Tied weights stay usable: a replaced `lm_head` keeps its own reordered copy while the
    input embedding keeps the original. Does nothing (returns 0) when oneDNN is unusable.
    """
    dtypes = (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)
    places = [(parent, name) for parent in model.modules()
              for name, child in parent.named_children() if _packable(child, dtypes)]
    usable = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    if not places or not usable or not _agrees(getattr(*places[0])):
        return 0
    for parent, name in places:  # one at a time, so each plain weight is freed before the next
        setattr(parent, name, PackedLinear(getattr(parent, name)))
    _return_freed_memory()
    return len(places)


def _return_freed_memory() -> None:
    """Hand the freed plain weights back to the OS. glibc keeps freed heap memory for reuse,
    so without this the process's resident size kept both copies; with it, packing SmolLM2
    adds ~106 MiB, the tied lm_head's own copy (`python scripts/probes/packed_linear.py`)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the C library already loaded in this process
    except (OSError, AttributeError):  # not glibc
        pass
