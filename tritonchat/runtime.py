"""Locate a Triton Inference Server binary and prepare what it needs to run our backend.

Two sources, in order: a system `tritonserver` (NVIDIA's NGC image, `/opt/tritonserver`),
then the real server shipped inside the `nvidia-pytriton` wheel. For the wheel we assemble a
backend directory (the Python backend, the stub for the running interpreter, our `chatllm`
backend) and an environment in which the stub finds this virtualenv's interpreter and the
very same libpython (see shared FACTS: PATH and LD_LIBRARY_PATH both matter).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SYSTEM_TRITON_HOME = Path("/opt/tritonserver")
BACKEND_NAME = "chatllm"


class TritonNotFoundError(RuntimeError):
    """Neither a system tritonserver nor the nvidia-pytriton wheel is available."""


@dataclass(frozen=True)
class TritonRuntime:
    """Everything needed to exec a tritonserver that can load our backend."""

    binary: Path
    backend_directory: Path
    env: dict[str, str]

    def command(self, args: list[str]) -> list[str]:
        """The argv for `tritonserver ARGS`, adding our backend directory unless given."""
        argv = [str(self.binary), *args]
        if not any(a.startswith("--backend-directory") for a in args):
            argv.append(f"--backend-directory={self.backend_directory}")
        return argv


def chatllm_backend_source() -> Path:
    """The folder holding our backend's `model.py` (next to the installed engine package)."""
    spec = importlib.util.find_spec("chatllm_engine")
    if spec is None or spec.origin is None:
        raise TritonNotFoundError("the chatllm_engine package is not installed (run `make install`)")
    return Path(spec.origin).resolve().parent.parent


def _pytriton_home() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return None
    home = Path(spec.origin).parent / "tritonserver"
    return home if (home / "bin" / "tritonserver").exists() else None


def _is_our_wrapper(path: Path) -> bool:
    """True for the `tritonserver` console script this package installs."""
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return b"tritonchat.runtime" in head


def _system_tritonserver() -> Path | None:
    candidate = SYSTEM_TRITON_HOME / "bin" / "tritonserver"
    if candidate.exists():
        return candidate
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = Path(folder) / "tritonserver"
        if found.is_file() and os.access(found, os.X_OK) and not _is_our_wrapper(found):
            return found
    return None


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.symlink_to(target)


def _copy(source: Path, target: Path) -> None:
    """Copy unless an identical copy is there (Triton refuses libraries that are symlinks
    pointing out of the backend directory)."""
    if target.is_symlink():
        target.unlink()
    if target.exists() and target.stat().st_size == source.stat().st_size and \
            target.stat().st_mtime >= source.stat().st_mtime:
        return
    shutil.copy2(source, target)


def prepare_backend_directory(python_backend: Path, stub: Path | None, dest: Path) -> Path:
    """Fill `dest` with `python/` (Triton's Python backend + stub) and our `chatllm/`."""
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in python_backend.iterdir():
        if item.is_file():
            _copy(item, python_dir / item.name)
    if stub is not None:
        _copy(stub, python_dir / "triton_python_backend_stub")
    _link(chatllm_backend_source(), dest / BACKEND_NAME)
    return dest


def _runtime_home() -> Path:
    return Path(os.environ.get("TRITONCHAT_RUNTIME_DIR", Path(sys.prefix) / "var" / "tritonchat"))


@dataclass(frozen=True)
class PythonEnv:
    """The Python the backend stub embeds: its `bin/` (for `python3` on PATH), version and LIBDIR."""

    bin_dir: Path
    version: str  # "3.11"
    libdir: str

    @classmethod
    def current(cls) -> PythonEnv:
        return cls(Path(sys.executable).parent, f"{sys.version_info.major}.{sys.version_info.minor}",
                   str(sysconfig.get_config_var("LIBDIR")))

    @classmethod
    def of(cls, venv: Path) -> PythonEnv:
        """Another virtualenv's Python (e.g. `.venv-vllm`, whose packages clash with ours)."""
        python = venv / "bin" / "python3"
        if not python.exists():
            raise TritonNotFoundError(f"{venv} is not a virtualenv (no bin/python3)")
        probe = ("import json, sys, sysconfig; print(json.dumps([f'{sys.version_info.major}."
                 "{sys.version_info.minor}', sysconfig.get_config_var('LIBDIR')]))")
        version, libdir = json.loads(subprocess.run([str(python), "-c", probe], check=True, capture_output=True,
                                                    text=True).stdout)
        return cls(python.parent, version, str(libdir))


def resolve_runtime(python_env: Path | None = None) -> TritonRuntime:
    """Find a tritonserver and build its backend directory and environment.

    `python_env`: a virtualenv for the models' Python (default: this one). The server binary
    still comes from here; only the stub's interpreter and libpython come from there.
    """
    python = PythonEnv.current() if python_env is None else PythonEnv.of(python_env)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(python.bin_dir), env.get("PATH", "")])
    same = python.version == PythonEnv.current().version  # one stub per Python version
    backends = _runtime_home() / ("backends" if same else f"backends-py{python.version}")

    system = _system_tritonserver()
    if system is not None:
        system_home = system.parent.parent
        backend_dir = prepare_backend_directory(system_home / "backends" / "python", None, backends)
        return TritonRuntime(binary=system, backend_directory=backend_dir, env=env)

    home = _pytriton_home()
    if home is None:
        raise TritonNotFoundError(
            "no tritonserver found: neither /opt/tritonserver (NGC image) nor the "
            "nvidia-pytriton wheel; run `make install`"
        )
    stub = home / "python_backend_stubs" / python.version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotFoundError(f"nvidia-pytriton ships no Python backend stub for Python {python.version}")
    backend_dir = prepare_backend_directory(home / "backends" / "python", stub, backends)
    libs = [python.libdir, str(home.parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    return TritonRuntime(binary=home / "bin" / "tritonserver", backend_directory=backend_dir, env=env)


def tritonserver_main() -> None:
    """Console script `tritonserver`: exec the real server with every flag passed through."""
    try:
        runtime = resolve_runtime()
    except TritonNotFoundError as exc:
        sys.stderr.write(f"tritonserver: {exc}\n")
        raise SystemExit(2) from exc
    argv = runtime.command(sys.argv[1:])
    os.execve(argv[0], argv, runtime.env)
