"""Rounds of C concurrent streaming clients through gateway -> Triton -> chatllm (the
benchmark's e2e mode), each with Triton's view of it: backend time to first token, time
requests waited in Triton's queue, execute() calls.

    python scripts/probes/stack_rounds.py 16 16 16 16          # four rounds of 16 clients
    python scripts/probes/stack_rounds.py --queue-delay-us 0 4 4 4
    python scripts/probes/stack_rounds.py --no-dynamic-batching 16 16

Options change a copy of the default model's config.pbtxt; `--verbose` adds
`--log-verbose=1` to tritonserver (its log path is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
from pathlib import Path

import httpx

from _common import MODEL, ROOT

from loadtest import bench
from tritonchat.launch import launch_gateway, launch_triton

KEYS = ("chatllm_time_to_first_token_seconds_sum", "chatllm_time_to_first_token_seconds_count",
        "nv_inference_queue_duration_us", "nv_inference_exec_count", "nv_inference_request_success")


def scrape(url: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        for key in KEYS:
            if line.startswith(key) and f'model="{MODEL}"' in line:
                totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clients", type=int, nargs="+")
    parser.add_argument("--queue-delay-us", type=int)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--no-dynamic-batching", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT / "model_repository" / MODEL, repo / MODEL)
        config = repo / MODEL / "config.pbtxt"
        text = config.read_text()
        if args.queue_delay_us is not None:
            text = re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {args.queue_delay_us}",
                          text)
        if args.max_num_batched_tokens is not None:
            text = re.sub(r'(key: "max_num_batched_tokens", value: \{ string_value: )"\d+"',
                          rf'\1"{args.max_num_batched_tokens}"', text)
        if args.no_dynamic_batching:
            text = text[:text.index("dynamic_batching {")] + text[text.index("instance_group"):]
        config.write_text(text)
        with launch_triton(repo, ["--log-verbose=1"] if args.verbose else None) as triton, \
                launch_gateway([triton.grpc_url]) as gateway:
            print("tritonserver log:", triton.log_path)
            asyncio.run(bench.run_clients(gateway, MODEL, 2, 4, bench.WARMUP_MESSAGES))  # as the benchmark does
            for clients in args.clients:
                before = scrape(triton.metrics_url)
                result = asyncio.run(bench.run_clients(gateway, MODEL, clients, 64))
                after = scrape(triton.metrics_url)
                d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in KEYS}
                s = result.summary()
                print(f"C={clients} {s['tokens_per_s']} tok/s, client TTFT p50 {s['ttft_p50_s']:.3f} s "
                      f"p99 {s['ttft_p99_s']:.3f} s; backend TTFT mean "
                      f"{d[KEYS[0]] / max(1.0, d[KEYS[1]]):.3f} s; Triton queue "
                      f"{d[KEYS[2]] / max(1.0, d[KEYS[4]]) / 1000:.1f} ms per request; "
                      f"{d[KEYS[3]]:.0f} execute() calls", flush=True)


if __name__ == "__main__":
    main()
