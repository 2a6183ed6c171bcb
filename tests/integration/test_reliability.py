"""Nothing lost: two echo servers behind one gateway, 8 closed-loop clients (half streaming).

1. One server is SIGKILLed under load: no non-streaming request is lost (the gateway runs
   them again on the other server, even mid-generation); a stream either completes or, when
   it had already sent text, ends with one error event and then `[DONE]`.
2. A rolling restart (SIGTERM, which drains, then start again; one server after the other):
   every request completes.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.integration.metrics import metric
from tests.integration.polling import wait_until
from tests.integration.reliability_load import ClosedLoop, describe
from tests.integration.servers import TritonProcess, launch_gateway, launch_triton
from tests.integration.test_multi_triton import endpoint_ready, kill_server, served
from tritonchat.launch import terminate

pytestmark = pytest.mark.integration

AFTER_EVENT = 16
"""Requests that must start and finish after a kill or restart before the load stops."""


def two_servers(echo_repository: Path, servers: contextlib.ExitStack) -> tuple[TritonProcess, TritonProcess, str]:
    a = servers.enter_context(launch_triton(echo_repository))
    b = servers.enter_context(launch_triton(echo_repository))
    gateway = servers.enter_context(
        launch_gateway([a.grpc_url, b.grpc_url], extra_args=["--health-check-interval-s", "0.5"]))
    return a, b, gateway


def failures_on(gateway: str, triton: TritonProcess) -> float:
    name = "tritonchat_gateway_endpoint_failures_total"
    return metric(f"{gateway}/metrics", name, endpoint=triton.grpc_url)


def test_killing_one_of_two_servers_loses_no_request_that_can_be_saved(
    echo_repository: Path, servers: contextlib.ExitStack
) -> None:
    a, b, gateway = two_servers(echo_repository, servers)
    load = ClosedLoop(gateway)
    load.start()
    try:
        wait_until(lambda: served(a) >= 4 and served(b) >= 4, "both servers serving the load")
        killed_at = time.monotonic()
        kill_server(a)
        wait_until(lambda: load.finished_since(killed_at) >= AFTER_EVENT, "requests after the kill", 60)
    finally:
        outcomes = load.stop()

    plain = [o for o in outcomes if not o.stream]
    streams = [o for o in outcomes if o.stream]
    assert plain and streams
    lost = [o for o in plain if not o.complete]
    assert not lost, f"non-streaming requests lost:\n{describe(lost)}"
    assert all(o.status == 200 for o in streams), describe([o for o in streams if o.status != 200])
    broken = [o for o in streams if not o.complete]
    for outcome in broken:  # cut by the kill after their first words: told so, then [DONE]
        assert outcome.text and outcome.expected.startswith(outcome.text), describe([outcome])
        assert len(outcome.errors) == 1 and outcome.done_last, describe([outcome])
    assert failures_on(gateway, a) >= 1, "the kill hit no request in flight: the test proved nothing"


def test_a_rolling_restart_loses_nothing(echo_repository: Path, servers: contextlib.ExitStack) -> None:
    a, b, gateway = two_servers(echo_repository, servers)
    load = ClosedLoop(gateway)
    load.start()
    try:
        wait_until(lambda: served(a) >= 4 and served(b) >= 4, "both servers serving the load")
        for server in (a, b):
            stopped_at = time.monotonic()
            terminate(server.process)  # SIGTERM: Triton turns not-ready, finishes what it has, exits
            assert server.process.returncode == 0, "the server did not drain and exit on SIGTERM"
            ports = (server.http_port, server.grpc_port, server.metrics_port)
            again = servers.enter_context(launch_triton(echo_repository, ports=ports))
            wait_until(lambda: endpoint_ready(gateway, again) == 1.0, "the restarted server routed to", 30)
            wait_until(lambda: load.finished_since(stopped_at) >= AFTER_EVENT, "requests after the restart", 60)
    finally:
        outcomes = load.stop()

    lost = [o for o in outcomes if not o.complete]
    assert not lost, f"{len(lost)} of {len(outcomes)} requests lost:\n{describe(lost)}"
    assert len(outcomes) >= 2 * AFTER_EVENT
