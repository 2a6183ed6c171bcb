"""Soak: the default stack under steady load for a long time; no errors, no memory growth.

Starts tritonserver (model_repository/) and a gateway on free 127.0.0.1 ports, runs `--users`
closed-loop chat clients (half streaming, `--max-tokens` new tokens each) for `--minutes`, and
samples the resident memory of the gateway and of every Python backend stub every 10 s. A
stub's memory moves with the running batch (its KV buffers), so single samples are compared
through medians: the baseline is the median over the minute after the warm-up, the end the
median over the last minute. The warm-up lasts `--warmup-minutes` and at least
`--warmup-requests` answers, so that the bounded caches are full before the baseline: the
prefix cache (`prefix_cache_tokens`, 4,096 tokens: ~90 of these prompts, ~94 MiB in bf16) and
the allocator pools; on a busy machine the first minutes answer few requests. Passes (exit 0) when
no request failed and each process's end is within `--tolerance` of its baseline.
`make soak` runs it with the defaults; docs/reliability.md quotes its output.

    .venv/bin/python scripts/soak.py --minutes 10 --users 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.timing import percentile  # noqa: E402
from tritonchat.launch import launch_gateway, launch_triton  # noqa: E402

MODEL = "smollm2-135m-instruct"
SAMPLE_INTERVAL_S = 10.0


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stubs(server_pid: int) -> dict[str, int]:
    """Python backend stubs started by the server: model folder -> pid."""
    found: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != server_pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            found[Path(argv[1].decode()).parent.parent.name] = int(stat.parent.name)
    return found


class Load:
    """Closed-loop chat clients; counts outcomes by status and keeps latencies."""

    def __init__(self, gateway: str, users: int, max_tokens: int) -> None:
        self.gateway, self.users, self.max_tokens = gateway, users, max_tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()  # guards the counters below
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(users)]

    def run(self, user: int) -> None:
        with httpx.Client(base_url=self.gateway, timeout=300) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                body = {"model": MODEL, "stream": user % 2 == 1, "max_tokens": self.max_tokens,
                        "messages": [{"role": "user", "content": f"User {user}, question {n}: tell me a fact."}]}
                started = time.monotonic()
                outcome = self.one(client, body)
                with self.lock:
                    self.outcomes[outcome] += 1
                    if outcome == "ok":
                        self.latencies.append(time.monotonic() - started)

    def one(self, client: httpx.Client, body: dict[str, object]) -> str:
        try:
            if not body["stream"]:
                response = client.post("/v1/chat/completions", json=body)
                ok = response.status_code == 200 and response.json()["choices"][0]["finish_reason"]
                return "ok" if ok else f"http {response.status_code}"
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    return f"http {response.status_code}"
                finished = done = False
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        if "error" in event:
                            return "error event"
                        finished = finished or any(c.get("finish_reason") for c in event.get("choices", []))
                return "ok" if finished and done else "incomplete stream"
        except httpx.HTTPError as exc:
            return type(exc).__name__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--warmup-requests", type=int, default=200,
                        help="answers the warm-up waits for as well (fills the prefix cache)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed memory growth (0.05 = 5%%)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        triton = stack.enter_context(launch_triton(ROOT / "model_repository"))
        gateway = stack.enter_context(launch_gateway([triton.grpc_url]))
        gateway_pid = next(p for p in _children(Path("/proc"), os.getpid()) if _is_gateway(p))
        processes = {"gateway": gateway_pid, **{f"stub {k}": v for k, v in stubs(triton.process.pid).items()}}
        load = Load(gateway, args.users, args.max_tokens)
        started = time.monotonic()
        for thread in load.threads:
            thread.start()
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in processes}
        end = started + args.minutes * 60
        warm: float | None = None  # seconds from the start when the warm-up ended
        while time.monotonic() < end:
            time.sleep(min(SAMPLE_INTERVAL_S, max(0.0, end - time.monotonic())))  # the sampling period
            elapsed = time.monotonic() - started
            for name, pid in processes.items():
                value = rss_kib(pid)
                if value is not None:
                    samples[name].append((elapsed, value))
            with load.lock:
                if warm is None and sum(load.outcomes.values()) >= args.warmup_requests:
                    warm = max(elapsed, args.warmup_minutes * 60)
                print(f"{elapsed:6.0f}s {dict(load.outcomes)} "
                      + " ".join(f"{n}={samples[n][-1][1] // 1024}MiB" for n in processes if samples[n]), flush=True)
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=300)
        alive = triton.process.poll() is None
    errors = sum(v for k, v in load.outcomes.items() if k != "ok")
    print(f"\n{args.minutes:g} min, {args.users} users, {args.max_tokens} tokens: {load.outcomes['ok']} requests "
          f"served, {errors} errors {dict(load.outcomes)}; latency p50 {percentile(load.latencies, 50) or 0:.2f}s "
          f"p99 {percentile(load.latencies, 99) or 0:.2f}s; tritonserver {'up' if alive else 'DIED'}")
    flat = warm is not None and warm + 60 <= args.minutes * 60 - 60
    if not flat:
        print(f"the warm-up ({args.warmup_minutes:g} min and {args.warmup_requests} requests) left no minute "
              "to compare with the last: run longer")
    for name in processes:
        if warm is None:
            break
        baseline = [v for t, v in samples[name] if warm <= t < warm + 60]
        last = [v for t, v in samples[name] if t >= args.minutes * 60 - 60]
        if not baseline or not last:
            continue
        before, after = statistics.median(baseline), statistics.median(last)
        growth = after / before - 1
        flat = flat and growth <= args.tolerance
        print(f"{name}: RSS median {before / 1024:.0f} MiB in the minute after warm-up (from {warm:.0f}s), "
              f"{after / 1024:.0f} MiB in "
              f"the last minute ({growth:+.1%}), peak {max(v for _, v in samples[name]) // 1024} MiB")
    passed = errors == 0 and alive and flat
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def _children(proc: Path, parent: int) -> list[int]:
    pids = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _is_gateway(pid: int) -> bool:
    try:
        return b"gateway" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
