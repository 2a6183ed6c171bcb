"""`tritonchat bench`: the engine and the full stack against the static-batch ceiling.

Two workloads (`--workload`):
- short: C short chat prompts (~43 tokens) sent at once, each generating exactly
  `new_tokens` tokens greedily (EOS ignored), so every mode does the same work;
- long: the 48 "document + question" prompts of `loadtest.documents` (64 to 1,993
  tokens), up to 128 tokens each, EOS honoured, sent by C users one after another (closed
  loop: user u sends prompts u, u + C, ...).
For each concurrency C, in one run:
  (1) ceiling   one static left-padded batch of C with plain `model.generate` (short only)
  (2) engine    the chatllm engine alone
  (3) e2e       C streaming clients: gateway -> Triton -> chatllm backend
  or, with `--url`, only (3) against any OpenAI-compatible server (vLLM, for a side-by-side).
Prints output tok/s, TTFT and inter-token latency (each gap between streamed tokens) p50/p99,
peak KV memory, and the ratios (2)/(1) and (3)/(1); writes JSON, markdown and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import json
import tempfile
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.layouts import model_parameters, write_model_variant
from loadtest.timing import SseDecoder, StreamMeasurement, percentile, record_chat_event

ROOT = Path(__file__).resolve().parent.parent
USER_REQUESTS = [
    "Write a short poem about the sea.",
    "Explain what a neural network is to a ten year old.",
    "Give me three tips for learning a new language.",
    "What are the main differences between Python and C?",
    "Describe a sunny morning in a small village.",
    "How do I make a cup of green tea?",
    "Summarise the plot of a detective story you invent.",
    "List some healthy breakfast ideas.",
    "Why is the sky blue? Answer briefly.",
    "Tell me a fun fact about octopuses.",
    "What should I pack for a weekend hiking trip?",
    "Explain recursion with a simple example.",
    "Write a friendly email inviting a colleague to lunch.",
    "What is the capital of Japan and what is it known for?",
    "Suggest a name for a small bakery and explain it.",
    "How does a bicycle stay upright?",
]


# Warm-up requests: the chat template's system prompt, but none of the benchmark's own
# prompts, reaches the prefix cache before the measurements.
WARMUP_MESSAGES = [[{"role": "user", "content": "Hello."}], [{"role": "user", "content": "Hi there!"}]]


@dataclass
class Result:
    mode: str
    concurrency: int
    output_tokens: int
    seconds: float
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    peak_kv_mib: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return percentile(values, q * 100)

        return {"mode": self.mode, "concurrency": self.concurrency, "output_tokens": self.output_tokens,
                "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 1),
                "ttft_p50_s": pct(self.ttft_s, 0.5), "ttft_p99_s": pct(self.ttft_s, 0.99),
                "itl_p50_s": pct(self.itl_s, 0.5), "itl_p99_s": pct(self.itl_s, 0.99),
                "peak_kv_mib": round(self.peak_kv_mib, 1)}


def chat_messages(concurrency: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": USER_REQUESTS[i % len(USER_REQUESTS)]}] for i in range(concurrency)]


WORKLOADS = ("short", "long")


@dataclass(frozen=True)
class Job:
    """One request of a workload."""

    messages: list[dict[str, str]]
    max_tokens: int
    ignore_eos: bool


def workload_jobs(workload: str, concurrency: int, new_tokens: int, long_prompts: int = 48) -> list[list[Job]]:
    """Per user, the requests it sends one after another (the long workload's first
    `long_prompts` prompts, at least one per user)."""
    if workload == "short":
        return [[Job(m, new_tokens, True)] for m in chat_messages(concurrency)]
    from loadtest.documents import build_document_prompts

    prompts = build_document_prompts()[:long_prompts]
    users: list[list[Job]] = [[] for _ in range(concurrency)]
    for i in range(max(len(prompts), concurrency)):
        prompt = prompts[i % len(prompts)]
        users[i % concurrency].append(Job(list(prompt.messages), prompt.max_tokens, False))
    return users


def _kv_bytes_per_token(model: Any) -> int:
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(2 * cfg.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size())


def run_ceiling(model: Any, tokenizer: Any, concurrency: int, new_tokens: int) -> Result:
    """One static left-padded batch through `model.generate` (prefill + decode)."""
    import torch

    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
             for m in chat_messages(concurrency)]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * concurrency
    kv = concurrency * out.shape[1] * _kv_bytes_per_token(model) / 2**20
    return Result("ceiling", concurrency, generated, seconds, peak_kv_mib=kv)


def run_engine(model: Any, tokenizer: Any, config: Any, concurrency: int, new_tokens: int,
               torch_thread: Executor, workload: str = "short", long_prompts: int = 48) -> Result:
    """The workload's requests on a fresh engine (`config`: the model's EngineConfig, warmed
    with one request) stepping on `torch_thread`; each user submits its next request when
    the last one finishes."""
    from chatllm_engine.engine import LLMEngine
    from chatllm_engine.types import GenerationRequest, SamplingParams

    # Room for every request at once, whatever the model's own limits.
    engine = LLMEngine(model, tokenizer, dataclasses.replace(config, max_num_seqs=max(64, concurrency),
                                                             kv_cache_tokens=1 << 20))
    users = workload_jobs(workload, concurrency, new_tokens, long_prompts)
    total = sum(len(u) for u in users)
    done = threading.Event()
    times: dict[str, list[tuple[float, int]]] = {}
    finished = 0
    lock = threading.Lock()

    def submit(user: int, index: int) -> list[tuple[Any, Any]]:
        job = users[user][index]
        rid = f"bench-{user}-{index}"
        times[rid] = [(time.perf_counter(), 0)]
        sampling = SamplingParams(temperature=0.0, max_tokens=job.max_tokens, ignore_eos=job.ignore_eos)
        return [(GenerationRequest(rid, messages=tuple(job.messages), sampling=sampling), sink_for(rid, user, index))]

    def sink_for(rid: str, user: int, index: int) -> Any:
        def sink(event: Any) -> None:
            nonlocal finished
            times[rid].append((time.perf_counter(), getattr(event, "num_output_tokens", 0)))
            if getattr(event, "finished", True):
                if index + 1 < len(users[user]):
                    engine.add_requests(submit(user, index + 1))
                with lock:
                    finished += 1
                    if finished == total:
                        done.set()
        return sink

    stepping = torch_thread.submit(engine.run)
    # A serving engine has answered requests before: one short request first puts the chat
    # template's system prompt in the prefix cache, as the e2e server's warm-up does.
    warmed = threading.Event()
    engine.add_request(GenerationRequest("bench-warmup", messages=tuple(WARMUP_MESSAGES[0]),
                                         sampling=SamplingParams(temperature=0.0, max_tokens=1)),
                       lambda event: warmed.set() if getattr(event, "finished", True) else None)
    warmed.wait()
    start = time.perf_counter()
    # In one call, as the backend queues the requests of one execute(): one step sees them all.
    first = [item for u in range(concurrency) if users[u] for item in submit(u, 0)]
    for outcome in engine.add_requests(first):
        if isinstance(outcome, Exception):
            raise outcome
    done.wait()
    seconds = time.perf_counter() - start
    engine.stop()
    stepping.result()
    result = Result("engine", concurrency, sum(n for ev in times.values() for _, n in ev), seconds,
                    peak_kv_mib=engine.stats.peak_kv_slots * _kv_bytes_per_token(model) / 2**20)
    for events in times.values():
        if len(events) > 1:
            result.ttft_s.append(events[1][0] - events[0][0])
        result.itl_s.extend((b[0] - a[0]) / max(1, b[1]) for a, b in zip(events[1:], events[2:]) if b[1])
    return result


async def _stream_one(client: Any, url: str, model: str, job: Job) -> StreamMeasurement:
    """One streamed chat request: when it was sent, when each text chunk arrived, its output tokens."""
    body = {"model": model, "messages": job.messages, "max_tokens": job.max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": job.ignore_eos, "stream_options": {"include_usage": True}}
    measurement = StreamMeasurement(start=time.perf_counter())
    decoder = SseDecoder()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            payload = decoder.feed(line)
            if payload is not None:
                record_chat_event(measurement, payload, time.perf_counter())
    measurement.end = time.perf_counter()
    return measurement


async def _run_user(client: Any, url: str, model: str, jobs: list[Job]) -> list[StreamMeasurement]:
    return [await _stream_one(client, url, model, job) for job in jobs]


async def run_clients(url: str, model: str, concurrency: int, new_tokens: int,
                       messages: list[list[dict[str, str]]] | None = None, workload: str = "short",
                       mode: str = "e2e", long_prompts: int = 48) -> Result:
    """`concurrency` streaming users running the workload (or one request per `messages`)."""
    import httpx

    users = ([[Job(m, new_tokens, True)] for m in messages] if messages
             else workload_jobs(workload, concurrency, new_tokens, long_prompts))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(_run_user(client, url, model, jobs) for jobs in users if jobs))
        seconds = time.perf_counter() - start
    flat = [m for user in outcomes for m in user]
    result = Result(mode, concurrency, sum(m.output_tokens for m in flat), seconds)
    for measurement in flat:
        if measurement.ttft_s is not None:
            result.ttft_s.append(measurement.ttft_s)
        result.itl_s.extend(measurement.token_gaps_s)
    return result


def _stub_peak_rss_mib() -> float:
    """Peak resident memory of Triton's Python-backend stub processes (the engines)."""
    peak = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if "triton_python_b" in text.split("\n", 1)[0]:
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def run_e2e(concurrencies: list[int], new_tokens: int, repository: Path, model: str, cpu_threads: int,
            warmup: bool = True, workload: str = "short", long_prompts: int = 48, dtype: str = "") -> list[Result]:
    """Start tritonserver + gateway on free ports, then run C streaming clients per C."""
    from tritonchat.launch import launch_gateway, launch_triton

    overrides = {"cpu_threads": str(cpu_threads)} if cpu_threads else {}
    if dtype:
        overrides["dtype"] = dtype
    with tempfile.TemporaryDirectory(prefix="tritonchat-bench-") as tmp:
        repo = Path(tmp) / "repo"
        write_model_variant(repository / model, repo, parameters=overrides)
        with launch_triton(repo) as triton, launch_gateway([triton.grpc_url]) as gateway:
            if warmup:
                asyncio.run(run_clients(gateway, model, 2, 4, WARMUP_MESSAGES))
            results = []
            for c in concurrencies:
                result = asyncio.run(run_clients(gateway, model, c, new_tokens, workload=workload,
                                                  long_prompts=long_prompts))
                result.peak_kv_mib = _stub_peak_rss_mib()
                results.append(result)
            return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--model-repository", default=str(ROOT / "model_repository"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--cpu-threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--workload", choices=WORKLOADS, default="short",
                        help="short: ~43-token prompts, exactly --new-tokens each; long: 48 document + question "
                             "prompts of 64-1,993 tokens, up to 128 tokens each, EOS honoured")
    parser.add_argument("--long-prompts", type=int, default=48, help="use the long workload's first N prompts")
    parser.add_argument("--dtype", default="", help="override the model's dtype parameter (engine and e2e)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-engine", action="store_true", help="no ceiling or engine-only runs")
    parser.add_argument("--url", default="",
                        help="only run the streaming clients against this OpenAI-compatible server (e.g. vLLM)")
    parser.add_argument("--served-model", default="smollm2", help="model name sent with --url")
    parser.add_argument("--label", default="", help="mode label of the results (default e2e, or the --url's)")
    parser.add_argument("--output", default="", help="folder for results.json, results.md, throughput.png")
    # Engines side by side, end to end (loadtest/bench_engines.py).
    parser.add_argument("--engine", nargs="+", choices=["ours", "vllm"], default=None,
                        help="compare these engines end to end instead, on --workload and --dtype "
                             "(vllm: needs make vllm-install)")
    parser.add_argument("--vllm-alone", action="store_true", help="with --engine: also vLLM's own OpenAI server")
    parser.add_argument("--vllm-venv", default=str(ROOT / ".venv-vllm"))
    parser.add_argument("--repeat", type=int, default=1, help="with --engine: runs per C, the median is kept")
    parser.add_argument("--skip-ceiling", action="store_true", help="with --engine: no static-batch ceiling")


def _table(results: list[Result]) -> str:
    ceiling = {r.concurrency: r.tokens_per_s for r in results if r.mode == "ceiling"}
    rows = ["| mode | C | output tok/s | vs ceiling | TTFT p50 s | TTFT p99 s | ITL p50 ms | ITL p99 ms | peak MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    for r in results:
        s = r.summary()
        ratio = r.tokens_per_s / ceiling[r.concurrency] if ceiling.get(r.concurrency) else None
        rows.append(f"| {r.mode} | {r.concurrency} | {r.tokens_per_s:.1f} | {fmt(ratio, digits=2)} | "
                    f"{fmt(s['ttft_p50_s'])} | {fmt(s['ttft_p99_s'])} | {fmt(s['itl_p50_s'], 1000, 1)} | "
                    f"{fmt(s['itl_p99_s'], 1000, 1)} | {r.peak_kv_mib:.0f} |")
    return "\n".join(rows)


def _plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("ceiling", "k--o"), ("engine", "b-o"), ("e2e", "g-s"), ("external", "r-^")):
        points = sorted((r.concurrency, r.tokens_per_s) for r in results if r.mode == mode)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests (C)")
    ax.set_ylabel("output tokens / s")
    ax.set_title("SmolLM2-135M, CPU, greedy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _as_backend_loads(plain_model: Any, config: Any) -> Any:
    """A copy of `plain_model` with what `load_model` adds for `config` (packed CPU weights)."""
    from chatllm_engine.loader import pack_cpu_weights

    model = copy.deepcopy(plain_model)
    pack_cpu_weights(model, config)
    return model


def main(args: argparse.Namespace) -> int:
    if args.engine:
        from loadtest.bench_engines import main as compare_engines

        return compare_engines(args)
    from chatllm_engine.config import EngineConfig
    from chatllm_engine.loader import load_model

    repository = Path(args.model_repository)
    results: list[Result] = []
    if args.url:
        for c in args.concurrency:
            result = asyncio.run(run_clients(args.url.rstrip("/"), args.served_model, c, args.new_tokens,
                                              workload=args.workload, mode=args.label or "external",
                                              long_prompts=args.long_prompts))
            results.append(result)
            print(json.dumps(result.summary()), flush=True)
        return _report(results, args)
    params = model_parameters(repository / args.model / "config.pbtxt")
    if args.cpu_threads:
        params["cpu_threads"] = str(args.cpu_threads)
    if args.dtype:
        params["dtype"] = args.dtype
    # Every forward pass (ceiling and engine) runs on this one thread, as in the backend,
    # where the engine thread owns the model (see chatllm_engine/engine_host.py).
    if not args.skip_engine:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-torch") as torch_thread:
            config = EngineConfig.from_parameters(params)
            # The ceiling is plain transformers; the engine gets the model as the backend loads it.
            model, tokenizer = torch_thread.submit(
                load_model, dataclasses.replace(config, pack_cpu_weights=False)).result()
            engine_model = torch_thread.submit(_as_backend_loads, model, config).result()
            if args.workload == "short":
                torch_thread.submit(run_ceiling, model, tokenizer, 2, 4).result()  # warm-up: allocations, kernels
            run_engine(engine_model, tokenizer, config, 2, 4, torch_thread)
            for c in args.concurrency:
                runs = [lambda: run_engine(engine_model, tokenizer, config, c, args.new_tokens, torch_thread,
                                           args.workload, args.long_prompts)]
                if args.workload == "short":
                    runs.insert(0, lambda: torch_thread.submit(run_ceiling, model, tokenizer, c,
                                                               args.new_tokens).result())
                for run in runs:
                    result = run()
                    results.append(result)
                    print(json.dumps(result.summary()), flush=True)
            del model, engine_model
    if not args.skip_e2e:
        for result in run_e2e(args.concurrency, args.new_tokens, repository, args.model, args.cpu_threads,
                              workload=args.workload, long_prompts=args.long_prompts, dtype=args.dtype):
            if args.label:
                result.mode = args.label
            results.append(result)
            print(json.dumps(result.summary()), flush=True)
    return _report(results, args)


def _report(results: list[Result], args: argparse.Namespace) -> int:
    order = ["ceiling", "engine", "e2e"]
    results.sort(key=lambda r: (r.concurrency, order.index(r.mode) if r.mode in order else len(order)))
    table = _table(results)
    print(table)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps([r.summary() | {"raw": asdict(r)} for r in results], indent=1))
        (out / "results.md").write_text(table + "\n")
        _plot(results, out / "throughput.png")
        print(f"wrote {out}/results.json, results.md, throughput.png")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
