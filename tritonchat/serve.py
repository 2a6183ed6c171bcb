"""`tritonchat serve`: run tritonserver and the gateway together, ready-checked, stopped together.

Stopping: SIGTERM or SIGINT (Ctrl-C), in the foreground, under nohup or under a supervisor
alike. The gateway is stopped first and drains (no new requests; open streams finish within
`grace_period_s`), then tritonserver drains what is left (`--exit-timeout-secs`). Should this
process be killed outright, both children get SIGTERM from the kernel (parent-death signal).
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .heartbeat import Heartbeat
from .launch import NotReadyError, gateway_argv, set_on_signal, spawn, terminate, triton_args, wait_until_ready
from .runtime import resolve_runtime

STOP_MARGIN_S = 15.0
"""Beyond the grace period, time a child gets to exit before it is killed."""


class ServeError(RuntimeError):
    """A server failed to start or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServeOptions:
    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    gateway_port: int = 9000
    api_keys: tuple[str, ...] = ()
    triton_args: tuple[str, ...] = ()
    ready_timeout_s: float = 300.0
    extra_triton_urls: tuple[str, ...] = ()
    grace_period_s: float = 30.0
    """On stop, time in-flight generations get to finish (gateway and Triton each)."""
    register_with: str = ""
    """A gateway URL: start Triton only and register it there with heart beats."""
    advertise_address: str = ""
    """The gRPC address the gateway reaches this Triton on (default host:grpc_port)."""
    heartbeat_interval_s: float = 5.0
    python_env: Path | None = None  # the models' virtualenv (e.g. .venv-vllm); default: this one

    def triton_argv(self) -> list[str]:
        return triton_args(self.model_repository, self.host, (self.http_port, self.grpc_port, self.metrics_port),
                           self.grace_period_s, self.triton_args)

    def triton_address(self) -> str:
        return self.advertise_address or f"{self.host}:{self.grpc_port}"

    def gateway_argv(self) -> list[str]:
        urls = [f"{self.host}:{self.grpc_port}", *self.extra_triton_urls]
        return gateway_argv(self.host, self.gateway_port, urls, list(self.api_keys),
                            ["--graceful-shutdown-s", str(self.grace_period_s)])

    def ports(self) -> list[tuple[str, int]]:
        triton = [("Triton HTTP", self.http_port), ("Triton gRPC", self.grpc_port),
                  ("Triton metrics", self.metrics_port)]
        return triton if self.register_with else [*triton, ("gateway", self.gateway_port)]


def check_ports_free(options: ServeOptions) -> None:
    """Fail at once, naming the port, when another server (a second `tritonchat serve`) holds one."""
    for name, port in options.ports():
        with socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                sock.bind((options.host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ServeError(f"cannot bind {options.host}:{port} ({name}): {exc.strerror}") from exc
                raise ServeError(
                    f"{options.host}:{port} ({name} port) is already in use: another `tritonchat serve` "
                    "or server is running there. Stop it, or choose other ports (--port, --http-port, "
                    "--grpc-port, --metrics-port).") from exc


def serve(options: ServeOptions) -> int:
    """Start both servers, print where they listen, and run until SIGINT/SIGTERM or a server dies."""
    if not (options.model_repository / "").is_dir():
        raise ServeError(f"model repository {options.model_repository} does not exist")
    check_ports_free(options)
    runtime = resolve_runtime(options.python_env)
    triton: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    heartbeat: Heartbeat | None = None
    stop = threading.Event()
    # Both stop signals set the same event, also where SIGINT was inherited as ignored (nohup, `&`).
    previous = {sig: signal.signal(sig, set_on_signal(stop)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # Own process groups: Ctrl-C reaches us only, and terminate() stops each child and its stubs.
        triton = spawn(runtime.command(options.triton_argv()), env=runtime.env)
        wait_until_ready(f"http://{options.host}:{options.http_port}/v2/health/ready", triton,
                         "tritonserver", options.ready_timeout_s, stop=stop)
        if options.register_with:
            heartbeat = Heartbeat(options.register_with, options.triton_address(),
                                  options.heartbeat_interval_s, next(iter(options.api_keys), None))
            heartbeat.start()
            print(f"tritonserver: http://{options.host}:{options.http_port} (gRPC "
                  f"{options.triton_address()}), registering with {options.register_with} every "
                  f"{options.heartbeat_interval_s:g}s", flush=True)
            print("Ctrl-C stops it.", flush=True)
            while not stop.wait(0.5):
                if triton.poll() is not None:
                    raise ServeError(f"tritonserver exited with status {triton.returncode}")
            return 0
        gateway = spawn(options.gateway_argv())
        wait_until_ready(f"http://{options.host}:{options.gateway_port}/health", gateway, "gateway",
                         60.0, stop=stop)
        print(f"tritonserver: http://{options.host}:{options.http_port} (gRPC {options.host}:{options.grpc_port}, "
              f"metrics http://{options.host}:{options.metrics_port}/metrics)", flush=True)
        print(f"gateway (OpenAI API): http://{options.host}:{options.gateway_port}/v1", flush=True)
        print("Ctrl-C (or SIGTERM) stops both, letting running requests finish.", flush=True)
        while not stop.wait(0.5):
            for name, process in (("tritonserver", triton), ("gateway", gateway)):
                if process.poll() is not None:
                    raise ServeError(f"{name} exited with status {process.returncode}")
        return 0
    except NotReadyError as exc:
        if stop.is_set():
            return 0  # stopped while starting
        raise ServeError(str(exc)) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if heartbeat is not None:
            heartbeat.stop()
        # The gateway first: it drains its streams while Triton still serves them.
        terminate(gateway, options.grace_period_s + STOP_MARGIN_S)
        terminate(triton, options.grace_period_s + STOP_MARGIN_S)
