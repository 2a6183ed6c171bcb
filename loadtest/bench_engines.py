"""`tritonchat bench --engine ours vllm [--vllm-alone]`: the engines side by side, end to end.

One run, the same chat prompts, C concurrent streaming clients per C (greedy; `--workload
short`: exactly `new_tokens` tokens each, EOS ignored; `--workload long`: the document prompts,
EOS honoured), against:
  ceiling      one static left-padded batch of C with plain `model.generate` (this process;
               short workload only)
  ours         gateway -> Triton -> chatllm backend on our engine (model_repository/)
  vllm         gateway -> Triton -> chatllm backend on vLLM's engine (model_repository_vllm/,
               the models' Python from the vLLM virtualenv)
  vllm-alone   vLLM's own OpenAI server (`vllm.entrypoints.openai.api_server`) with the same
               weights and flags, no Triton and no gateway: what Triton and the gateway cost
Prints one table (output tok/s and TTFT p50 per C) and the ratio vllm / vllm-alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench import ROOT, WARMUP_MESSAGES, Result, run_ceiling, run_clients
from loadtest.layouts import model_parameters, write_model_variant
from tritonchat.launch import free_port, launch_gateway, launch_triton, terminate, wait_until_ready

OURS = (ROOT / "model_repository", "smollm2-135m-instruct")
VLLM = (ROOT / "model_repository_vllm", "smollm2-135m-instruct-vllm")
START_TIMEOUT_S = 900.0  # vLLM compiles the model on a first start


@dataclass(frozen=True)
class Load:
    """What every server gets: C clients per C, the workload, tokens, runs per C, and the
    models' dtype (`dtype`: every server's, when set)."""

    concurrencies: list[int]
    new_tokens: int
    repeat: int = 1
    workload: str = "short"
    long_prompts: int = 48
    dtype: str = ""


def _measure(url: str, model: str, mode: str, load: Load) -> list[Result]:
    """Warm up, then C clients per C, `repeat` times; keeps the run with the median tok/s."""
    asyncio.run(run_clients(url, model, 2, 4, WARMUP_MESSAGES))
    results = []
    for c in load.concurrencies:
        runs = sorted((asyncio.run(run_clients(url, model, c, load.new_tokens, workload=load.workload,
                                               long_prompts=load.long_prompts)) for _ in range(load.repeat)),
                      key=lambda r: r.tokens_per_s)
        result = runs[len(runs) // 2]
        result.mode = mode
        results.append(result)
        print(json.dumps(result.summary()), flush=True)
    return results


def run_stack(repository: Path, model: str, mode: str, load: Load, python_env: Path | None = None) -> list[Result]:
    """gateway -> Triton -> chatllm on one model of `repository` (alone in a fresh repository)."""
    with tempfile.TemporaryDirectory(prefix="tritonchat-bench-") as tmp:
        repo = Path(tmp) / "repo"
        write_model_variant(repository / model, repo, parameters={"dtype": load.dtype} if load.dtype else None)
        with launch_triton(repo, python_env=python_env, ready_timeout_s=START_TIMEOUT_S) as triton, \
                launch_gateway([triton.grpc_url]) as gateway:
            return _measure(gateway, model, mode, load)


def vllm_server_argv(venv: Path, params: dict[str, str], weights: str, model: str, port: int) -> list[str]:
    """vLLM's own OpenAI server with the flags the Triton model gives vLLM's engine."""
    argv = [str(venv / "bin" / "python3"), "-m", "vllm.entrypoints.openai.api_server", "--model", weights,
            "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", params.get("dtype") or "auto", "--max-num-seqs", params.get("max_num_seqs") or "64",
            "--generation-config", "vllm"]
    if params.get("max_model_len"):
        argv += ["--max-model-len", params["max_model_len"]]
    if params.get("enable_prefix_caching", "true").lower() in ("1", "true", "yes", "on"):
        argv.append("--enable-prefix-caching")
    return argv


def _weights_for_vllm(venv: Path, params: dict[str, str]) -> str:
    """The folder vLLM loads: the de-quantised copy of a GGUF file, made as the backend makes it."""
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]);"
              "from chatllm_engine.loader import resolve_model_path;"
              "from chatllm_engine.vllm_engine import materialize_gguf;"
              "p = json.loads(sys.argv[2]); path = resolve_model_path(p['model_path']);"
              "print(materialize_gguf(path, p['gguf_file'], False) if p.get('gguf_file') else path)")
    out = subprocess.run([str(venv / "bin" / "python3"), "-c", script, str(ROOT / "backends" / "chatllm"),
                          json.dumps(params)], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def run_vllm_alone(venv: Path, load: Load) -> list[Result]:
    repository, model = VLLM
    params = model_parameters(repository / model / "config.pbtxt")
    if load.dtype:
        params["dtype"] = load.dtype
    port = free_port()
    env = dict(os.environ)
    if params.get("cpu_kvcache_space"):
        env["VLLM_CPU_KVCACHE_SPACE"] = params["cpu_kvcache_space"]
    if params.get("cpu_omp_threads_bind"):
        env["VLLM_CPU_OMP_THREADS_BIND"] = params["cpu_omp_threads_bind"]
    log = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
    argv = vllm_server_argv(venv, params, _weights_for_vllm(venv, params), model, port)
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/health", process, "vLLM's OpenAI server", START_TIMEOUT_S, log)
        return _measure(url, model, "vllm-alone", load)
    finally:
        terminate(process)


def engines_table(results: list[Result], modes: list[str]) -> str:
    by = {(r.mode, r.concurrency): r for r in results}
    concurrencies = sorted({r.concurrency for r in results})
    header = "| C | " + " | ".join(f"{m} tok/s | {m} TTFT p50 ms" if m != "ceiling" else "ceiling tok/s"
                                   for m in modes)
    rule = "| --- " * (1 + sum(1 if m == "ceiling" else 2 for m in modes)) + "|"
    compare = "vllm" in modes and "vllm-alone" in modes
    if compare:
        header += " | vllm / vllm-alone tok/s | TTFT vllm / alone"
        rule += " --- | --- |"
    rows = [header + " |", rule]
    for c in concurrencies:
        cells = [str(c)]
        for m in modes:
            r = by.get((m, c))
            ttft = statistics.median(r.ttft_s) * 1000 if r is not None and r.ttft_s else None
            cells.append("-" if r is None else f"{r.tokens_per_s:.1f}")
            if m != "ceiling":
                cells.append("-" if ttft is None else f"{ttft:.0f}")
        if compare:
            a, b = by.get(("vllm", c)), by.get(("vllm-alone", c))
            if a is not None and b is not None and a.ttft_s and b.ttft_s:
                cells.append(f"{a.tokens_per_s / b.tokens_per_s:.2f}")
                cells.append(f"{statistics.median(a.ttft_s) / statistics.median(b.ttft_s):.2f}")
            else:
                cells += ["-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> int:
    from chatllm_engine.config import EngineConfig
    from chatllm_engine.loader import load_model

    venv = Path(args.vllm_venv).resolve()
    load = Load(args.concurrency, args.new_tokens, args.repeat, args.workload, args.long_prompts, args.dtype)
    modes: list[str] = []
    results: list[Result] = []
    if not args.skip_ceiling and args.workload == "short":
        params = model_parameters(OURS[0] / OURS[1] / "config.pbtxt") | ({"dtype": load.dtype} if load.dtype else {})
        config = EngineConfig.from_parameters({**params, "pack_cpu_weights": "false"})
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-torch") as torch_thread:
            model, tokenizer = torch_thread.submit(load_model, config).result()
            torch_thread.submit(run_ceiling, model, tokenizer, 2, 4).result()
            for c in args.concurrency:
                result = torch_thread.submit(run_ceiling, model, tokenizer, c, args.new_tokens).result()
                results.append(result)
                print(json.dumps(result.summary()), flush=True)
            del model
        modes.append("ceiling")
    for engine in args.engine:
        repository, model_name = OURS if engine == "ours" else VLLM
        results += run_stack(repository, model_name, engine, load, python_env=venv if engine == "vllm" else None)
        modes.append(engine)
    if args.vllm_alone:
        results += run_vllm_alone(venv, load)
        modes.append("vllm-alone")
    table = engines_table(results, modes)
    print(table)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "engines.json").write_text(json.dumps([r.summary() for r in results], indent=1))
        (out / "engines.md").write_text(table + "\n")
        print(f"wrote {out}/engines.json, engines.md")
    return 0
