"""A Triton server that joins a running gateway at run time, like a FastChat worker.

The gateway starts with one fixed server (A). Server B is started later and `tritonchat
register` keeps it registered with heart beats. B then gets requests; B and its sidecar are
killed (SIGKILL, as a lost machine); B is out of rotation within two heart-beat intervals,
and every request sent after that succeeds (on A).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.metrics import metric, sample
from tests.integration.polling import wait_until
from tests.integration.servers import TritonProcess, copy_echo, launch_gateway, launch_triton
from tests.integration.test_multi_triton import (
    SteadyLoad,
    endpoint_ready,
    kill_server,
    served,
)

pytestmark = pytest.mark.integration

HEARTBEAT_S = 1.5


def test_server_registers_serves_and_leaves(tmp_path: Path, echo_triton: TritonProcess) -> None:
    with launch_gateway([echo_triton.grpc_url]) as gateway, \
            launch_triton(copy_echo(tmp_path / "repo")) as second:
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "tritonchat.cli", "register", "--gateway", gateway,
             "--address", second.grpc_url, "--interval", str(HEARTBEAT_S)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            check_join_and_leave(gateway, echo_triton, second, sidecar)
        finally:
            if sidecar.poll() is None:
                os.killpg(sidecar.pid, signal.SIGKILL)
                sidecar.wait(timeout=10)


def check_join_and_leave(gateway: str, first: TritonProcess, second: TritonProcess,
                         sidecar: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: endpoint_ready(gateway, second) == 1.0, "the registered server routed to",
               timeout_s=30, alive=sidecar)  # type: ignore[arg-type]
    before = served(second)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for _ in range(6):
            response = client.post("/v1/completions", json={"model": "echo", "prompt": "a b"})
            assert response.status_code == 200
    assert served(second) >= before + 2, "the new server got none of the requests"

    load = SteadyLoad(gateway)
    load.start()
    try:
        wait_until(lambda: load.count() >= 5, "the steady load running", timeout_s=30)
        os.killpg(sidecar.pid, signal.SIGKILL)
        kill_server(second)
        killed = time.monotonic()
        wait_until(lambda: endpoint_ready(gateway, second) != 1.0, "the dead server out of rotation",
                   timeout_s=2 * HEARTBEAT_S)
        out = time.monotonic()
        # The registration itself expires too: the endpoint leaves the pool.
        wait_until(lambda: endpoint_ready(gateway, second) is None, "the registration dropped",
                   timeout_s=4 * HEARTBEAT_S)
        sent_after = load.sent_count()
        wait_until(lambda: load.count() >= sent_after + 10, "requests after the drop", timeout_s=30)
    finally:
        load.stop()
    assert out - killed <= 2 * HEARTBEAT_S
    after = [o for o in load.outcomes if o.started >= out]
    assert after and all(o.status == 200 for o in after), [o for o in after if o.status != 200][:3]
    assert served(first) > 0


def test_serve_register_with_joins_and_leaves_cleanly(tmp_path: Path,
                                                      echo_triton: TritonProcess) -> None:
    """`tritonchat serve --register-with`: Triton alone, registered; SIGTERM unregisters it
    at once and stops Triton."""
    from tritonchat.launch import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    address = f"127.0.0.1:{grpc}"
    with launch_gateway([echo_triton.grpc_url]) as gateway:
        serve = subprocess.Popen(
            [sys.executable, "-m", "tritonchat.cli", "serve", "--model-repository",
             str(copy_echo(tmp_path / "repo")), "--http-port", str(http), "--grpc-port", str(grpc),
             "--metrics-port", str(metrics), "--register-with", gateway, "--heartbeat-interval", "30"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            def routed() -> bool:
                return sample(f"{gateway}/metrics", "tritonchat_gateway_endpoint_ready", endpoint=address) == 1.0

            wait_until(routed, "the served Triton routed to", timeout_s=240, alive=serve)  # type: ignore[arg-type]
            metrics_url = f"http://127.0.0.1:{metrics}/metrics"
            with httpx.Client(base_url=gateway, timeout=30) as client:
                for _ in range(6):
                    assert client.post("/v1/completions",
                                       json={"model": "echo", "prompt": "x"}).status_code == 200
            assert metric(metrics_url, "nv_inference_request_success", model="echo") >= 2

            serve.send_signal(signal.SIGTERM)
            wait_until(lambda: not routed(), "the unregistered server out of rotation",
                       timeout_s=10)  # long before its next beat (30 s)
            assert serve.wait(timeout=60) == 0
            with httpx.Client(base_url=gateway, timeout=30) as client:
                for _ in range(4):
                    assert client.post("/v1/completions",
                                       json={"model": "echo", "prompt": "x"}).status_code == 200
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=10)
