"""Bursts of concurrent chat requests against the default model: who is served, who is refused
and how fast (docs/reliability.md quotes its output).

Starts tritonserver (model_repository/, or a copy with the capacity given) and a gateway on free
127.0.0.1 ports, opens one keep-alive connection per client first (so a burst measures answers,
not TCP set-up), then sends `--bursts` bursts of `--clients` requests at once, half of them
streaming, each waiting for the previous burst to end. Prints one line per burst.

    .venv/bin/python scripts/overload_burst.py --clients 400 --bursts 5
    .venv/bin/python scripts/overload_burst.py --clients 300 --max-num-seqs 4 --max-queue-size 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.timing import percentile  # noqa: E402
from tritonchat.launch import launch_gateway, launch_triton  # noqa: E402

MODEL = "smollm2-135m-instruct"


def repository(max_num_seqs: int | None, max_queue_size: int | None) -> Path:
    """model_repository/ itself, or a copy of the default model with another capacity."""
    if max_num_seqs is None and max_queue_size is None:
        return ROOT / "model_repository"
    folder = Path(tempfile.mkdtemp(prefix="overload-")) / MODEL
    shutil.copytree(ROOT / "model_repository" / MODEL, folder, ignore=shutil.ignore_patterns("__pycache__"))
    config = folder / "config.pbtxt"
    text = config.read_text()
    for key, value, default in (("max_num_seqs", max_num_seqs, "64"), ("max_queue_size", max_queue_size, "256")):
        if value is not None:
            text = text.replace(f'{{ key: "{key}", value: {{ string_value: "{default}" }} }}',
                                f'{{ key: "{key}", value: {{ string_value: "{value}" }} }}')
    config.write_text(text)
    return folder.parent


async def one(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[int, float, str]:
    body = {"model": MODEL, "stream": i % 2 == 1, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Say something about the number {i}."}]}
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = (await response.aread()).decode(errors="replace")
    who = "gateway" if "every server of model" in text else "backend" if "engine is at capacity" in text else ""
    return response.status_code, time.perf_counter() - started, who


async def run(gateway: str, clients: int, bursts: int, max_tokens: int) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=gateway, timeout=300, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(clients)))  # open the connections
        for burst in range(1, bursts + 1):
            started = time.perf_counter()
            results = await asyncio.gather(*(one(client, i, max_tokens) for i in range(clients)))
            statuses = Counter(status for status, _, _ in results)
            refused = [seconds * 1000 for status, seconds, _ in results if status == 429]
            served = [seconds for status, seconds, _ in results if status == 200]
            by = Counter(who for status, _, who in results if status == 429)

            def ms(q: float) -> str:
                value = percentile(refused, q)
                return "-" if value is None else f"{value:.0f}"

            print(f"burst {burst}: {clients} clients, served {statuses.get(200, 0)}, refused "
                  f"{statuses.get(429, 0)} (gateway {by.get('gateway', 0)}, backend {by.get('backend', 0)}), "
                  f"other {sum(v for k, v in statuses.items() if k not in (200, 429))}; refusal ms p50 {ms(50)} "
                  f"p99 {ms(99)} max {ms(100)}; served s p50 "
                  f"{(percentile(served, 50) or 0):.1f}; burst took {time.perf_counter() - started:.1f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-queue-size", type=int)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        triton = stack.enter_context(launch_triton(repository(args.max_num_seqs, args.max_queue_size)))
        gateway = stack.enter_context(launch_gateway([triton.grpc_url]))
        asyncio.run(run(gateway, args.clients, args.bursts, args.max_tokens))
        alive = triton.process.poll() is None
        print(f"tritonserver {'still up' if alive else f'exited with {triton.process.returncode}'}")


if __name__ == "__main__":
    main()
