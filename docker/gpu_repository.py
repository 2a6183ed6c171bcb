#!/usr/bin/env python3
"""Rewrite the chatllm models of a model repository for GPUs, in place.

    python3 docker/gpu_repository.py REPOSITORY [--count N] [--dtype auto]

For every model whose `config.pbtxt` says `backend: "chatllm"`:
- each `instance_group` entry `kind: KIND_CPU` becomes `kind: KIND_GPU` with `count: N`
  (N instances on every GPU the container sees; 1 is right for one engine per GPU);
- the `dtype` parameter becomes `auto` (bfloat16 on GPUs that have it, else float16/32);
- `cpu_threads` is dropped (it only matters for CPU instances).

Models on other backends are left as they are. The default repository is written for CPUs
(what runs on a laptop and in CI); this script is the single place that knows the GPU
difference, so the two never drift apart. It fails, naming the file and what it did not find,
when a chatllm config does not have the expected shape, rather than silently leaving a CPU
setting behind. Only the standard library: it runs in NVIDIA's image before anything else.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_BACKEND = re.compile(r'^\s*backend\s*:\s*"chatllm"\s*$', re.MULTILINE)
_CPU_GROUP = re.compile(r"\{[^{}]*\bkind\s*:\s*KIND_CPU\b[^{}]*\}")
_COUNT = re.compile(r"\bcount\s*:\s*\d+")
_DTYPE = re.compile(r'(\{\s*key\s*:\s*"dtype"\s*,?\s*value\s*:\s*\{\s*string_value\s*:\s*")[^"]*(")')
_CPU_THREADS = re.compile(r'\s*\{\s*key\s*:\s*"cpu_threads"[^{}]*\{[^{}]*\}\s*\}\s*,?')


class ConfigShapeError(ValueError):
    """A chatllm config lacks what the rewrite expects."""


def to_gpu(config: str, *, count: int = 1, dtype: str = "auto", where: str = "config") -> str:
    """The GPU version of one chatllm `config.pbtxt` text."""
    groups = _CPU_GROUP.findall(config)
    if not groups:
        raise ConfigShapeError(f"{where}: no instance_group entry with kind: KIND_CPU")

    def gpu_group(match: re.Match[str]) -> str:
        group = match.group(0).replace("KIND_CPU", "KIND_GPU")
        if _COUNT.search(group):
            return _COUNT.sub(f"count: {count}", group)
        return group.replace("{", f"{{ count: {count},", 1)

    config = _CPU_GROUP.sub(gpu_group, config)
    config, dtype_hits = _DTYPE.subn(rf"\g<1>{dtype}\g<2>", config)
    if dtype_hits != 1:
        raise ConfigShapeError(f'{where}: expected one "dtype" parameter, found {dtype_hits}')
    config = _CPU_THREADS.sub("", config)
    # Dropping the last parameter can leave "...}," before the closing bracket.
    config = re.sub(r",(\s*\])", r"\1", config)
    return config


def rewrite_repository(repository: Path, *, count: int = 1, dtype: str = "auto") -> list[str]:
    """Rewrite every chatllm model under `repository`; returns the model names changed."""
    changed = []
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        text = config_path.read_text()
        if not _BACKEND.search(text):
            continue
        config_path.write_text(to_gpu(text, count=count, dtype=dtype, where=str(config_path)))
        changed.append(config_path.parent.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--count", type=int, default=1, help="instances per GPU (default 1)")
    parser.add_argument("--dtype", default="auto", help="the dtype parameter (default auto)")
    args = parser.parse_args(argv)
    try:
        changed = rewrite_repository(args.repository, count=args.count, dtype=args.dtype)
    except ConfigShapeError as exc:
        print(f"gpu_repository: {exc}", file=sys.stderr)
        return 1
    if not changed:
        print(f"gpu_repository: no chatllm model in {args.repository}", file=sys.stderr)
        return 1
    print(f"GPU instances for: {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
