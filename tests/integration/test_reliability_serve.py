"""Stopping `tritonchat serve` (echo model): SIGTERM drains a running stream then exits with
nothing left behind; SIGKILL leaves no orphans either (parent-death signal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.integration.polling import wait_until
from tests.integration.servers import copy_echo, free_port

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 120.0


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (zombies excluded)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    repository = copy_echo(tmp_path / "repository")
    port = free_port()
    argv = [sys.executable, "-m", "tritonchat.cli", "serve", "--model-repository", str(repository),
            "--port", str(port), "--http-port", str(free_port()), "--grpc-port", str(free_port()),
            "--metrics-port", str(free_port()), "--grace-period", "20"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{gateway}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "tritonchat serve ready", READY_TIMEOUT_S, alive=process)  # type: ignore[arg-type]
        yield process, gateway
    finally:
        leftovers = children(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in leftovers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def slow_stream(gateway: str, words: int, events: list[str]) -> threading.Thread:
    body = {"model": "echo", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["SLOW", *(f"w{i}" for i in range(words))])}]}

    def run() -> None:
        with httpx.stream("POST", f"{gateway}/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_a_running_stream_finish_then_stops_everything(
    serve: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, gateway = serve
    started = children(process.pid)
    assert started, "serve started no children"
    events: list[str] = []
    reader = slow_stream(gateway, 40, events)  # about 2 s
    wait_until(lambda: len(events) >= 3, "the stream running")

    process.send_signal(signal.SIGTERM)
    reader.join(timeout=60)

    assert not reader.is_alive()
    assert events[-1] == "[DONE]"
    assert not any("error" in json.loads(e) for e in events[:-1]), events
    finish = [c["finish_reason"] for e in events[:-1] for c in json.loads(e).get("choices", [])]
    assert "stop" in finish, "the stream was cut instead of drained"
    assert process.wait(timeout=60) == 0
    wait_until(lambda: not any(alive(pid) for pid in started), "every child gone", 30)


def test_sigkill_of_serve_leaves_no_orphans(serve: tuple[subprocess.Popen[bytes], str]) -> None:
    process, _ = serve
    started = children(process.pid)
    assert len(started) >= 2, "tritonserver, its stub and the gateway"

    process.kill()
    process.wait()

    wait_until(lambda: not any(alive(pid) for pid in started), "children of a SIGKILLed serve gone", 60)
