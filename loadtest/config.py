"""The experiment's settings and its command-line options (no Locust import here, so
`tritonchat --help` and the unit tests never load gevent's monkey-patching)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.layouts import Layout, default_layouts
from loadtest.workload import WorkloadOptions

ROOT = Path(__file__).resolve().parent.parent
VIAS = ("gateway", "grpc")
"""Ways in: through the OpenAI gateway (`ChatUser`), or straight to Triton's gRPC stream
(`TritonGrpcUser`)."""


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a model, a grid and how long each point runs."""

    model_repository: Path
    model: str
    layouts: tuple[Layout, ...]
    users: tuple[int, ...] = (1, 4, 16)
    via: tuple[str, ...] = ("gateway",)
    warmup_s: float = 5.0
    duration_s: float = 20.0
    drain_timeout_s: float = 30.0
    quiet_cores: float = 0.3
    """Before each point, wait until other work keeps fewer cores than this busy..."""
    quiet_wait_s: float = 120.0
    """...for at most this long (0: do not wait)."""
    workload: WorkloadOptions = WorkloadOptions()
    output: Path = field(default_factory=lambda: Path("runs") / f"experiment-{dt.datetime.now():%Y%m%d-%H%M%S}")
    docs: Path | None = None
    command: str = ""

    def validate(self) -> None:
        if not (self.model_repository / self.model / "config.pbtxt").is_file():
            raise ValueError(f"no {self.model}/config.pbtxt in {self.model_repository}")
        if not self.layouts or not self.users or not self.via:
            raise ValueError("the grid needs at least one layout, one user count and one way in")
        if any(u < 1 for u in self.users):
            raise ValueError("user counts must be positive")
        unknown = set(self.via) - set(VIAS)
        if unknown:
            raise ValueError(f"unknown --via {sorted(unknown)}; choose from {list(VIAS)}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("the window must be positive and the warm-up not negative")


def gpu_count() -> int:
    """GPUs `nvidia-smi -L` lists (0 without the tool)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="Triton model name (a folder of the repository)")
    parser.add_argument("--layout", action="append", default=None, metavar="SPEC",
                        help="instance layout, repeatable: cpu:COUNTxTHREADS, gpu:COUNT@GPUS "
                             "(gpu:2@0, gpu:1@0,1, gpu:1@0+1); default: what fits this machine")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16], help="concurrent users per point")
    parser.add_argument("--via", nargs="+", default=["gateway"], choices=VIAS,
                        help="gateway: through the OpenAI gateway; grpc: straight to Triton")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each measured window")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds the requests in flight at the window's end may take to finish")
    parser.add_argument("--quiet-cores", type=float, default=0.3,
                        help="before each point wait until other processes use fewer CPU cores than this")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait at most for that (0: never wait)")
    WorkloadOptions.add_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="run directory (default runs/experiment-<time>)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="also write the report here (e.g. docs/scaling.md; plots go to docs/scaling/)")


def config_from_args(args: argparse.Namespace, command: str = "") -> ExperimentConfig:
    layouts = tuple(Layout.parse(s) for s in args.layout) if args.layout else tuple(
        default_layouts(os.cpu_count() or 1, gpu_count()))
    extra = {"output": args.output} if args.output is not None else {}
    return ExperimentConfig(
        model_repository=Path(args.model_repository).resolve(), model=args.model, layouts=layouts,
        users=tuple(args.users), via=tuple(dict.fromkeys(args.via)), warmup_s=args.warmup,
        duration_s=args.duration, drain_timeout_s=args.drain_timeout, quiet_cores=args.quiet_cores,
        quiet_wait_s=args.quiet_wait, workload=WorkloadOptions.from_args(args), docs=args.docs, command=command,
        **extra)
