"""Start tritonserver and the gateway as child processes on free ports and wait until ready.

Used by `tritonchat serve`, the benchmark and the integration tests. Readiness is polled on the
servers' own health endpoints with a deadline; teardown stops only the processes started here.

Every child is started by `spawn`: in its own process group (Ctrl-C at a terminal reaches the
launcher only), with a parent-death signal (SIGTERM when the launcher dies, even by SIGKILL, so
no server outlives it), and with SIGINT back to its default even when the launcher inherited
it as ignored (`nohup ... &`). Children are stopped with SIGTERM, the signal every supervisor
sends; tritonserver and the gateway both drain on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .runtime import resolve_runtime

TRITON_READY_TIMEOUT_S = 240.0
GATEWAY_READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
"""SIGTERM to SIGKILL: a server's drain grace period must end before this."""
TRITON_EXIT_TIMEOUT_S = 10.0
"""How long a launched tritonserver drains on SIGTERM (`--exit-timeout-secs`)."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """What a child does between fork and exec (async-signal-safe calls only: ctypes into libc)."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def setup() -> None:
        if libc is None:
            return
        libc.signal(signal.SIGINT, signal.SIG_DFL)  # an inherited "ignore" survives exec otherwise
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that dies with this process (see module doc)."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_child_setup(os.getpid()), **kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TritonProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class NotReadyError(RuntimeError):
    """A server exited or missed its readiness deadline; the message says which and why."""


def wait_until_ready(url: str, process: subprocess.Popen[bytes], name: str, timeout_s: float,
                     log: Path | None = None, stop: threading.Event | None = None) -> None:
    """Poll `url` until it answers 200; fail if the process exits or the deadline passes."""
    def tail() -> str:
        return "\n" + log.read_text(errors="replace")[-4000:] if log is not None else ""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotReadyError(f"{name} exited with status {process.returncode} before it was ready{tail()}")
        if stop is not None and stop.is_set():
            raise NotReadyError(f"interrupted while waiting for {name}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # the polling interval of a readiness probe
    raise NotReadyError(f"{name} was not ready within {timeout_s:.0f}s ({url}){tail()}")


def set_on_signal(event: threading.Event) -> Callable[[int, Any], None]:
    """A signal handler that sets `event`. Python runs handlers in the main thread between two
    bytecodes, possibly while that thread holds the event's own lock inside `event.wait()`:
    calling `event.set()` there deadlocked `tritonchat serve` on SIGTERM. The handler hands the
    call to a short-lived thread instead."""
    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=event.set, name="stop-signal", daemon=True).start()
    return handler


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a child politely (SIGTERM, as a supervisor would), then for good.

    Children are started with `start_new_session=True`, so each leads its own process group:
    what is left of that group afterwards (Triton's Python backend stubs, when the server had
    to be killed) is killed too, so no stub outlives its server.
    """
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    kill_group(process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process left in the group that `process` led (nothing if it led none)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def triton_args(model_repository: Path, host: str, ports: tuple[int, int, int], exit_timeout_s: float,
                extra_args: Sequence[str] = ()) -> list[str]:
    """tritonserver's flags: the repository, its (HTTP, gRPC, metrics) `ports` on `host`, and how
    long it drains on SIGTERM; `extra_args` follow (an `--exit-timeout-secs` among them wins)."""
    http, grpc, metrics = ports
    exit_timeout = [] if any(a.startswith("--exit-timeout-secs") for a in extra_args) else [
        f"--exit-timeout-secs={max(1, round(exit_timeout_s))}"]
    return [f"--model-repository={model_repository}",
            f"--http-address={host}", f"--http-port={http}",
            f"--grpc-address={host}", f"--grpc-port={grpc}",
            f"--metrics-address={host}", f"--metrics-port={metrics}",
            *exit_timeout, *extra_args]


def gateway_argv(host: str, port: int, triton_urls: list[str], api_keys: list[str] | None = None,
                 extra_args: list[str] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "gateway", "--host", host, "--port", str(port)]
    for url in triton_urls:
        argv += ["--triton-url", url]
    for key in api_keys or []:
        argv += ["--api-key", key]
    return argv + list(extra_args or [])


@contextlib.contextmanager
def launch_triton(model_repository: Path, extra_args: list[str] | None = None,
                  ports: tuple[int, int, int] | None = None, python_env: Path | None = None,
                  ready_timeout_s: float = TRITON_READY_TIMEOUT_S) -> Iterator[TritonProcess]:
    """A tritonserver serving `model_repository`; ready when yielded.

    `ports` are (HTTP, gRPC, metrics), e.g. those of a server that was killed, to restart it
    where its clients expect it; free ports when None. `python_env`: the virtualenv whose
    Python runs the models (e.g. `.venv-vllm` for vLLM-engine models).
    """
    runtime = resolve_runtime(python_env)
    http, grpc, metrics = ports if ports is not None else (free_port(), free_port(), free_port())
    args = triton_args(model_repository, "127.0.0.1", (http, grpc, metrics), TRITON_EXIT_TIMEOUT_S, extra_args or ())
    log = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = spawn(runtime.command(args), env=runtime.env, stdout=sink, stderr=subprocess.STDOUT)
    handle = TritonProcess(process, http, grpc, metrics, log)
    try:
        wait_until_ready(f"{handle.http_url}/v2/health/ready", process, "tritonserver", ready_timeout_s, log)
        yield handle
    finally:
        terminate(process)


@contextlib.contextmanager
def launch_gateway(triton_urls: list[str], api_keys: list[str] | None = None,
                   extra_args: list[str] | None = None) -> Iterator[str]:
    """The gateway (`python -m gateway`) on a free port; yields its base URL once healthy.

    `extra_args` are more gateway flags, e.g. `["--health-check-interval-s", "0.5"]`.
    """
    port = free_port()
    argv = gateway_argv("127.0.0.1", port, triton_urls, api_keys, extra_args)
    log = Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = spawn(argv, stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base}/health", process, "gateway", GATEWAY_READY_TIMEOUT_S, log)
        yield base
    finally:
        terminate(process)
