"""Load a transformers causal LM and its tokenizer as EngineConfig describes."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import EngineConfig
from .errors import EngineError
from .packed_linear import pack_linear_layers

logger = logging.getLogger(__name__)

PACKAGE_SCHEME = "package:"


def resolve_model_path(model_path: str) -> str:
    """`package:NAME[/sub/dir]` -> the folder of an installed package (not imported: some
    weight packages import heavy plugins on import); anything else is returned unchanged."""
    if not model_path.startswith(PACKAGE_SCHEME):
        return model_path
    name, _, sub = model_path[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"model_path {model_path!r}: Python package {name!r} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return str(folder / sub) if sub else str(folder)


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so oneDNN runs bf16
    matmuls at full speed instead of emulating them."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto`: bf16 on GPUs and on CPUs that compute it natively, fp32 elsewhere."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device == "cpu" and cpu_has_native_bf16() else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def pack_cpu_weights(model: PreTrainedModel, config: EngineConfig) -> int:
    """On CPU, give linear layers oneDNN-reordered weights (fp32 ones, and bf16 ones where the
    CPU computes bf16 natively), unless `pack_cpu_weights` is off; returns how many changed."""
    if not (config.pack_cpu_weights and config.device == "cpu"):
        return 0
    packed = pack_linear_layers(model, bf16=cpu_has_native_bf16())
    logger.info("reordered the weights of %d linear layers for oneDNN", packed)
    return packed


def load_model(config: EngineConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load weights on the instance's device (or split over `num_gpus` GPUs); on CPU, linear
    layers get oneDNN-reordered weights unless `pack_cpu_weights` is off (pack_cpu_weights)."""
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    path = resolve_model_path(config.model_path)
    tokenizer_path = resolve_model_path(config.tokenizer_path) if config.tokenizer_path else path
    gguf: dict[str, Any] = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    dtype = resolve_dtype(config.dtype, config.device)
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_path, trust_remote_code=config.trust_remote_code,
        **(gguf if tokenizer_path == path else {}),
    )
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code, **gguf}
    if config.device.startswith("cuda") and config.num_gpus > 1:
        first = int(config.device.split(":")[1])
        gpus = range(first, first + config.num_gpus)
        kwargs["device_map"] = "auto"
        if config.max_gpu_memory:
            kwargs["max_memory"] = {g: config.max_gpu_memory for g in gpus}
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:
        model.to(config.device)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    pack_cpu_weights(model, config)
    if config.chat_template:
        tokenizer.chat_template = config.chat_template
    logger.info("loaded %s (%s) on %s", path, dtype, config.device)
    return model, tokenizer
