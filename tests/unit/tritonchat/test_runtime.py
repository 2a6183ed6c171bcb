"""The Triton runtime locator: backend directory, environment, flag pass-through."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from tritonchat import runtime
from tritonchat.runtime import TritonNotFoundError, TritonRuntime, prepare_backend_directory, resolve_runtime


def test_command_adds_our_backend_directory_unless_given() -> None:
    rt = TritonRuntime(binary=Path("/x/tritonserver"), backend_directory=Path("/b"), env={})
    assert rt.command(["--model-repository=m"]) == ["/x/tritonserver", "--model-repository=m",
                                                   "--backend-directory=/b"]
    assert rt.command(["--backend-directory=/mine"]) == ["/x/tritonserver", "--backend-directory=/mine"]


def test_backend_directory_holds_python_backend_stub_and_chatllm(tmp_path: Path) -> None:
    python_backend = tmp_path / "src"
    python_backend.mkdir()
    (python_backend / "libtriton_python.so").write_bytes(b"lib")
    (python_backend / "triton_python_backend_utils.py").write_text("# utils")
    stub = tmp_path / "stub"
    stub.write_bytes(b"stub")

    dest = prepare_backend_directory(python_backend, stub, tmp_path / "backends")
    prepare_backend_directory(python_backend, stub, tmp_path / "backends")  # idempotent

    python_dir = dest / "python"
    # Triton refuses libraries that are symlinks escaping the backend directory: real copies.
    assert not (python_dir / "libtriton_python.so").is_symlink()
    assert (python_dir / "libtriton_python.so").read_bytes() == b"lib"
    assert (python_dir / "triton_python_backend_stub").read_bytes() == b"stub"
    assert (dest / "chatllm" / "model.py").is_file()


def test_wheel_runtime_sets_path_and_library_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "_system_tritonserver", lambda: None)
    monkeypatch.setenv("TRITONCHAT_RUNTIME_DIR", str(tmp_path))
    rt = resolve_runtime()
    assert rt.binary.name == "tritonserver" and rt.binary.exists()
    assert rt.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert rt.env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (rt.backend_directory / "python" / "triton_python_backend_stub").exists(), version


def test_clear_error_when_no_tritonserver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_system_tritonserver", lambda: None)
    monkeypatch.setattr(runtime, "_pytriton_home", lambda: None)
    with pytest.raises(TritonNotFoundError, match="no tritonserver found"):
        resolve_runtime()


def test_system_tritonserver_is_preferred(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "opt" / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "backends" / "python").mkdir(parents=True)
    (home / "backends" / "python" / "libtriton_python.so").write_bytes(b"lib")
    binary = home / "bin" / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setattr(runtime, "SYSTEM_TRITON_HOME", home)
    monkeypatch.setenv("TRITONCHAT_RUNTIME_DIR", str(tmp_path / "rt"))
    rt = resolve_runtime()
    assert rt.binary == binary
    assert (rt.backend_directory / "python" / "libtriton_python.so").read_bytes() == b"lib"
    assert rt.env.get("LD_LIBRARY_PATH") == os.environ.get("LD_LIBRARY_PATH")  # the image's own setup


def test_models_can_run_on_another_virtualenvs_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--python-env`: the stub finds that virtualenv's python3 first on PATH and its libpython."""
    monkeypatch.setattr(runtime, "_system_tritonserver", lambda: None)
    monkeypatch.setenv("TRITONCHAT_RUNTIME_DIR", str(tmp_path))
    venv = tmp_path / "other-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python3").symlink_to(sys.executable)
    rt = resolve_runtime(python_env=venv)
    assert rt.env["PATH"].split(os.pathsep)[0] == str(venv / "bin")
    assert rt.env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    with pytest.raises(TritonNotFoundError, match="not a virtualenv"):
        resolve_runtime(python_env=tmp_path / "missing")
