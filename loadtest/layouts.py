"""Worker layouts as Triton `instance_group` settings, and model repository variants.

FastChat scales by starting model workers; Triton says the same with `instance_group`:

| FastChat                                   | layout spec   | config.pbtxt                                       |
| ------------------------------------------ | ------------- | -------------------------------------------------- |
| N CPU workers, T threads each              | `cpu:NxT`     | `{count: N, kind: KIND_CPU}`, `cpu_threads: T`     |
| one GPU worker                             | `gpu:1@0`     | `{count: 1, kind: KIND_GPU, gpus: [0]}`            |
| several workers on one GPU                 | `gpu:2@0`     | `{count: 2, kind: KIND_GPU, gpus: [0]}`            |
| one worker per GPU                         | `gpu:1@0,1`   | `{count: 1, kind: KIND_GPU, gpus: [0, 1]}`         |
| one worker spread over GPUs (`--num-gpus`) | `gpu:1@0+1`   | `{count: 1, kind: KIND_GPU, gpus: [0]}`, `num_gpus: 2` |

(Triton starts `count` instances on each listed GPU; `num_gpus` makes the chatllm engine
split one instance over that many consecutive GPUs starting at its own.)

`write_model_variant` copies one model into a fresh repository and rewrites its config.pbtxt
(a layout, parameter values) with Triton's own protobuf schema (no text substitution).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

_CPU = re.compile(r"^cpu:(?P<count>\d+)(?:x(?P<threads>\d+))?$")
_GPU = re.compile(r"^gpu:(?P<count>\d+)@(?P<gpus>\d+(?:[,+]\d+)*)$")


class LayoutError(ValueError):
    """A layout spec that cannot be parsed; the message shows the grammar."""


@dataclass(frozen=True)
class Layout:
    """One way to place a model's instances."""

    kind: str  # "cpu" or "gpu"
    count: int = 1
    gpus: tuple[int, ...] = ()
    cpu_threads: int = 0  # torch threads per instance; 0: torch's default
    num_gpus: int = 1  # GPUs one instance spans

    @classmethod
    def parse(cls, spec: str) -> Layout:
        """`cpu:2x1`, `cpu:1`, `gpu:2@0`, `gpu:1@0,1`, `gpu:1@0+1` (see the module table)."""
        text = spec.strip().lower()
        if m := _CPU.match(text):
            layout = cls("cpu", int(m["count"]), cpu_threads=int(m["threads"] or 0))
        elif m := _GPU.match(text):
            gpus_text = m["gpus"]
            if "+" in gpus_text and "," in gpus_text:
                raise LayoutError(f"layout {spec!r}: use either ',' (one instance per GPU) or '+' "
                                  "(one instance over several GPUs), not both")
            if "+" in gpus_text:
                span = [int(g) for g in gpus_text.split("+")]
                if span != list(range(span[0], span[0] + len(span))):
                    raise LayoutError(f"layout {spec!r}: an instance spans consecutive GPUs, e.g. 0+1")
                layout = cls("gpu", int(m["count"]), gpus=(span[0],), num_gpus=len(span))
            else:
                gpus = tuple(int(g) for g in gpus_text.split(","))
                if len(set(gpus)) != len(gpus):
                    raise LayoutError(f"layout {spec!r}: a GPU is listed twice")
                layout = cls("gpu", int(m["count"]), gpus=gpus)
        else:
            raise LayoutError(f"layout {spec!r}: expected cpu:COUNT[xTHREADS] or gpu:COUNT@GPUS "
                              "(GPUS like 0 or 0,1 or 0+1)")
        if layout.count < 1:
            raise LayoutError(f"layout {spec!r}: the instance count must be at least 1")
        return layout

    @property
    def name(self) -> str:
        """The spec this layout parses from (canonical form)."""
        if self.kind == "cpu":
            return f"cpu:{self.count}" + (f"x{self.cpu_threads}" if self.cpu_threads else "")
        sep = "+" if self.num_gpus > 1 else ","
        gpus = list(range(self.gpus[0], self.gpus[0] + self.num_gpus)) if self.num_gpus > 1 else list(self.gpus)
        return f"gpu:{self.count}@{sep.join(map(str, gpus))}"

    @property
    def slug(self) -> str:
        """The name as a folder name."""
        return re.sub(r"[^a-z0-9]+", "-", self.name).strip("-")

    @property
    def instances(self) -> int:
        return self.count * (len(self.gpus) if self.kind == "gpu" else 1)

    def describe(self) -> str:
        """Plain words, e.g. "2 CPU instances x 1 thread"."""
        if self.kind == "cpu":
            threads = f" x {self.cpu_threads} thread{'s' if self.cpu_threads != 1 else ''}" if self.cpu_threads else ""
            return f"{self.count} CPU instance{'s' if self.count != 1 else ''}{threads}"
        if self.num_gpus > 1:
            return f"{self.count} instance{'s' if self.count != 1 else ''} each over GPUs {self.name.split('@')[1]}"
        per = f"{self.count} instance{'s' if self.count != 1 else ''}"
        return f"{per} on GPU {self.gpus[0]}" if len(self.gpus) == 1 else f"{per} on each of GPUs {list(self.gpus)}"

    def apply(self, config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
        """A copy of `config` with this layout's instance_group and engine parameters."""
        out = model_config_pb2.ModelConfig()
        out.CopyFrom(config)
        del out.instance_group[:]
        group = out.instance_group.add()
        group.count = self.count
        if self.kind == "cpu":
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
            if self.cpu_threads:
                out.parameters["cpu_threads"].string_value = str(self.cpu_threads)
        else:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
            group.gpus.extend(self.gpus)
            if self.num_gpus > 1:
                out.parameters["num_gpus"].string_value = str(self.num_gpus)
        return out


def default_layouts(cpu_count: int, gpu_count: int) -> list[Layout]:
    """What to compare on this machine: the GPU layouts when GPUs exist, else CPU splits.

    On CPU every layout uses all cores: 1 instance x all threads, and 2 (and 4 when there
    are at least 8 cores) instances sharing them.
    """
    if gpu_count >= 1:
        layouts = [Layout("gpu", 1, (0,)), Layout("gpu", 2, (0,))]
        if gpu_count >= 2:
            layouts += [Layout("gpu", 1, (0, 1)), Layout("gpu", 1, (0,), num_gpus=2)]
        return layouts
    cores = max(1, cpu_count)
    layouts = [Layout("cpu", 1, cpu_threads=cores)]
    for count in (2, 4):
        if cores >= count and (count == 2 or cores >= 8):
            layouts.append(Layout("cpu", count, cpu_threads=max(1, cores // count)))
    return layouts


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def model_parameters(config_pbtxt: Path) -> dict[str, str]:
    """The `parameters` of a config.pbtxt, parsed with Triton's own protobuf schema."""
    return {key: value.string_value for key, value in read_config(config_pbtxt).parameters.items()}


def write_model_variant(model_dir: Path, repository: Path, layout: Layout | None = None,
                        parameters: Mapping[str, str] | None = None) -> Path:
    """Copy `model_dir` into `repository`, giving its config.pbtxt `layout` (when given) and
    these `parameters` values; returns the copy."""
    config = read_config(model_dir / "config.pbtxt")
    changes = []
    if layout is not None:
        config = layout.apply(config)
        changes.append(f"layout {layout.name} ({layout.describe()})")
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
        changes.append(f"{key}={value}")
    target = repository / model_dir.name
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("__pycache__"))
    header = f"# {model_dir.name}" + (f" with {', '.join(changes)}" if changes else "") + ", written by loadtest\n"
    (target / "config.pbtxt").write_text(header + text_format.MessageToString(config))
    return target

