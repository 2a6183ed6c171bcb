"""`tritonchat serve`: run tritonserver and the gateway together, ready-checked, stopped together."""

from __future__ import annotations

import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .launch import NotReadyError, gateway_argv, terminate, wait_until_ready
from .runtime import resolve_runtime


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
    python_env: Path | None = None  # the models' virtualenv (e.g. .venv-vllm); default: this one

    def triton_argv(self) -> list[str]:
        return [
            f"--model-repository={self.model_repository}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            *self.triton_args,
        ]

    def gateway_argv(self) -> list[str]:
        urls = [f"{self.host}:{self.grpc_port}", *self.extra_triton_urls]
        return gateway_argv(self.host, self.gateway_port, urls, list(self.api_keys))


def serve(options: ServeOptions) -> int:
    """Start both servers, print where they listen, and run until Ctrl-C or a server dies."""
    if not (options.model_repository / "").is_dir():
        raise ServeError(f"model repository {options.model_repository} does not exist")
    runtime = resolve_runtime(options.python_env)
    triton: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # Own process groups: Ctrl-C reaches us only, and terminate() stops each child and its stubs.
        triton = subprocess.Popen(runtime.command(options.triton_argv()), env=runtime.env, start_new_session=True)
        wait_until_ready(f"http://{options.host}:{options.http_port}/v2/health/ready", triton,
                         "tritonserver", options.ready_timeout_s, stop=stop)
        gateway = subprocess.Popen(options.gateway_argv(), start_new_session=True)
        wait_until_ready(f"http://{options.host}:{options.gateway_port}/health", gateway, "gateway",
                         60.0, stop=stop)
        print(f"tritonserver: http://{options.host}:{options.http_port} (gRPC {options.host}:{options.grpc_port}, "
              f"metrics http://{options.host}:{options.metrics_port}/metrics)", flush=True)
        print(f"gateway (OpenAI API): http://{options.host}:{options.gateway_port}/v1", flush=True)
        print("Ctrl-C stops both.", flush=True)
        while not stop.wait(0.5):
            for name, process in (("tritonserver", triton), ("gateway", gateway)):
                if process.poll() is not None:
                    raise ServeError(f"{name} exited with status {process.returncode}")
        return 0
    except KeyboardInterrupt:
        return 0
    except NotReadyError as exc:
        raise ServeError(str(exc)) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        terminate(gateway)
        terminate(triton)
