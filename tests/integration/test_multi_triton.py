"""Two real tritonservers behind one gateway: spreading, failover, readmission.

One test walks through the life of a small cluster, on 127.0.0.1 only:
1. both servers up: sequential requests are spread over both (Triton's own counters);
2. two slow streams run, one on each server, and a steady request load starts;
3. server A is killed (SIGKILL): its stream ends with an error event and `[DONE]`, the other
   stream finishes, every request sent after the kill succeeds (on B), and the gateway drops
   A from routing within a few seconds (its `tritonchat_gateway_endpoint_ready` gauge);
4. A is started again on the same ports: the gateway takes it back and it serves requests;
5. B is killed with no traffic: the health probes alone drop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.metrics import metric, sample
from tests.integration.polling import wait_until
from tests.integration.servers import TritonProcess, launch_gateway, launch_triton
from tests.unit.test_docker_files import TRITON_SERIES

pytestmark = pytest.mark.integration

DROP_DEADLINE_S = 5.0
""""Dropped within a few seconds": from the kill to the endpoint's ready gauge reading 0."""
READMIT_DEADLINE_S = 15.0
"""From the restarted server being ready to the gateway routing to it again."""
SLOW_WORDS = 60
"""Words of each slow stream; the echo model sends one per 50 ms, so about 3 s."""
LOAD_THREADS = 3
MAX_LOAD_REQUESTS = 3000
"""Bound on the steady load, whatever happens."""


def kill_server(triton: TritonProcess) -> None:
    """SIGKILL, as a crashed machine would, to the server and its backend stubs at once
    (launch_triton starts it as the leader of its own process group)."""
    os.killpg(triton.process.pid, signal.SIGKILL)
    triton.process.wait(timeout=10)


def served(triton: TritonProcess) -> float:
    """Requests Triton says the echo model completed successfully."""
    return metric(triton.metrics_url, "nv_inference_request_success", model="echo")


def endpoint_ready(gateway: str, triton: TritonProcess) -> float | None:
    return sample(f"{gateway}/metrics", "tritonchat_gateway_endpoint_ready", endpoint=triton.grpc_url)


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    text: str


@dataclass
class SteadyLoad:
    """A few threads sending small completions back to back until stopped."""

    gateway: str
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # guards outcomes
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(LOAD_THREADS):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        with httpx.Client(base_url=self.gateway, timeout=30) as client:
            while not self._stop.is_set() and len(self.outcomes) < MAX_LOAD_REQUESTS:
                started = time.monotonic()
                with self._lock:
                    self.sent += 1
                try:
                    response = client.post(
                        "/v1/completions", json={"model": "echo", "prompt": "steady load"}
                    )
                    status = response.status_code
                    text = (
                        response.json()["choices"][0]["text"] if status == 200 else response.text
                    )
                except httpx.HTTPError as exc:
                    status, text = 0, repr(exc)
                with self._lock:
                    self.outcomes.append(Outcome(started, time.monotonic(), status, text))

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def sent_count(self) -> int:
        with self._lock:
            return self.sent

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@dataclass
class SlowStream:
    """A slow chat stream read on its own thread, event by event."""

    gateway: str
    events: list[object] = field(default_factory=list)
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        words = " ".join(["SLOW", *(f"w{i}" for i in range(SLOW_WORDS))])
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}
        try:
            with httpx.stream(
                "POST", f"{self.gateway}/v1/chat/completions", json=body, timeout=30
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data = line.removeprefix("data: ")
                        self.events.append(data if data == "[DONE]" else json.loads(data))
        except httpx.HTTPError as exc:
            self.error = repr(exc)

    def contents(self) -> int:
        return sum(
            1
            for e in list(self.events)
            if isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content")
        )

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the stream hung"


def test_two_servers_spread_failover_and_readmission(
    echo_repository: Path, servers: contextlib.ExitStack
) -> None:
    a = servers.enter_context(launch_triton(echo_repository))
    b = servers.enter_context(launch_triton(echo_repository))
    gateway = servers.enter_context(
        launch_gateway(
            [a.grpc_url, b.grpc_url],
            extra_args=[
                "--triton-metrics-port", str(a.metrics_port),
                "--triton-metrics-port", str(b.metrics_port),
                "--health-check-interval-s", "0.5",
            ],
        )
    )
    http = httpx.Client(base_url=gateway, timeout=30)
    servers.callback(http.close)
    wait_until(
        lambda: endpoint_ready(gateway, a) == 1 and endpoint_ready(gateway, b) == 1,
        "both endpoints ready", 10,
    )
    assert sorted(m["id"] for m in http.get("/v1/models").json()["data"]) == ["echo", "echo-alias"]

    # 1. Both up: one request at a time alternates between them.
    for i in range(20):
        answer = http.post("/v1/completions", json={"model": "echo", "prompt": f"spread {i}"})
        assert answer.status_code == 200, answer.text
    wait_until(lambda: served(a) + served(b) >= 20, "Triton to count the requests", 5)
    assert served(a) >= 5 and served(b) >= 5, (served(a), served(b))
    exported = httpx.get(b.metrics_url, timeout=5).text
    assert all(f"\n{name}{{" in exported for name in TRITON_SERIES)  # the dashboard's

    # 2. One slow stream on each server (the second goes to the idle one), then steady load
    # (the echo model's instance is busy with the slow stream, so the load queues behind it).
    streams = [SlowStream(gateway), SlowStream(gateway)]
    for stream in streams:
        stream.start()
        wait_until(lambda: stream.contents() >= 2, "the slow stream's first words", 10)
    load = SteadyLoad(gateway)
    load.start()
    servers.callback(load.stop)  # also when an assertion fails first (stop is idempotent)
    wait_until(lambda: load.sent_count() >= LOAD_THREADS, "the steady load to start", 10)

    # 3. Kill A while both streams are mid-way.
    killed_at = time.monotonic()
    kill_server(a)
    drop_s = wait_until(lambda: endpoint_ready(gateway, a) == 0, "A dropped", DROP_DEADLINE_S)
    for stream in streams:
        stream.join()
    failed = [s for s in streams if any(isinstance(e, dict) and "error" in e for e in s.events)]
    finished = [s for s in streams if s not in failed]
    assert len(failed) == 1 and len(finished) == 1, [s.events[-3:] for s in streams]
    dead_stream = failed[0]
    assert dead_stream.error is None and dead_stream.events[-1] == "[DONE]"
    error = next(e["error"] for e in dead_stream.events if isinstance(e, dict) and "error" in e)
    assert error["code"] == "service_unavailable" and "incomplete" in error["message"]
    assert finished[0].contents() == SLOW_WORDS + 1
    count_at_drop = load.count()
    wait_until(lambda: load.count() >= count_at_drop + 10, "load served by B alone", 10)

    # 4. Restart A where it was; the gateway takes it back.
    a2 = servers.enter_context(
        launch_triton(echo_repository, ports=(a.http_port, a.grpc_port, a.metrics_port))
    )
    restarted_at = time.monotonic()  # launch_triton returns once A is ready
    readmit_s = wait_until(
        lambda: endpoint_ready(gateway, a2) == 1, "A readmitted", READMIT_DEADLINE_S
    )
    wait_until(lambda: served(a2) >= 5, "the restarted A to serve requests", 10)
    load.stop()

    # 5. With no traffic at all, the health probes alone drop a dead server.
    kill_server(b)
    idle_drop_s = wait_until(
        lambda: endpoint_ready(gateway, b) == 0, "B dropped by the probes", DROP_DEADLINE_S
    )
    answer = http.post("/v1/completions", json={"model": "echo", "prompt": "only A now"})
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "only A now"

    after_kill = [o for o in load.outcomes if o.started >= killed_at]
    in_flight = [o for o in load.outcomes if o.started < killed_at <= o.ended]
    bad = [o for o in after_kill if o.status != 200 or o.text != "steady load"]
    assert not bad, bad[:5]
    assert len(after_kill) >= 20
    print(
        f"\nA dropped {drop_s:.2f}s after the kill; readmitted {readmit_s:.2f}s after its "
        f"restart ({time.monotonic() - restarted_at:.1f}s to 5 requests); idle B dropped "
        f"{idle_drop_s:.2f}s after its kill; "
        f"{len(after_kill)} requests after the kill all succeeded; "
        f"{sum(o.status == 200 for o in in_flight)}/{len(in_flight)} in flight at the kill succeeded"
    )
