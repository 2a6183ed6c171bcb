"""Greedy agreement of bf16 with fp32 on both benchmark workloads' prompts, through the engine.

For each prompt: the tokens the engine generates greedily in fp32 and in bf16 (the default
model's config otherwise). Prints the share of identical tokens (position by position, over
the fp32 answer's length) and the share of answers identical from start to end.

    .venv/bin/python scripts/probes/bf16_agreement.py [--long-tokens 64] [--long-prompts 48] [--short-tokens 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from _common import ROOT, MODEL

from chatllm_engine.config import EngineConfig
from chatllm_engine.engine import LLMEngine
from chatllm_engine.loader import load_model
from chatllm_engine.types import GenerationRequest, SamplingParams
from loadtest.bench import workload_jobs
from loadtest.layouts import model_parameters


def generate(config: EngineConfig, jobs: list[tuple[list[dict[str, str]], int, bool]]) -> list[list[int]]:
    model, tokenizer = load_model(config)
    engine = LLMEngine(model, tokenizer, dataclasses.replace(config, kv_cache_tokens=1 << 20))
    tokens: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    for i, (messages, max_tokens, ignore_eos) in enumerate(jobs):
        sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
        engine.add_request(GenerationRequest(f"r{i}", messages=tuple(messages), sampling=sampling),
                           lambda event, i=i: tokens[i].extend(event.token_ids))
    while engine.has_work():
        engine.step()
    return [tokens[i] for i in range(len(jobs))]


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    same = sum(sum(x == y for x, y in zip(p, q)) for p, q in zip(a, b))
    return {"identical_tokens": round(same / max(1, sum(len(p) for p in a)), 3),
            "identical_answers": round(sum(p == q for p, q in zip(a, b)) / len(a), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--long-tokens", type=int, default=64, help="max tokens per long-workload answer")
    parser.add_argument("--long-prompts", type=int, default=48, help="the long workload's first N prompts")
    parser.add_argument("--short-tokens", type=int, default=64, help="tokens per short-workload answer")
    args = parser.parse_args()
    config = EngineConfig.from_parameters(model_parameters(ROOT / "model_repository" / MODEL / "config.pbtxt"))
    workloads = {
        "short": [(j.messages, j.max_tokens, False) for u in workload_jobs("short", 16, args.short_tokens) for j in u],
        "long": [(j.messages, min(j.max_tokens, args.long_tokens), False)
                 for u in workload_jobs("long", args.long_prompts, 0, args.long_prompts) for j in u],
    }
    for name, jobs in workloads.items():
        fp32 = generate(dataclasses.replace(config, dtype="float32"), jobs)
        bf16 = generate(dataclasses.replace(config, dtype="bfloat16"), jobs)
        print(json.dumps({"workload": name, "prompts": len(jobs), "torch_threads": torch.get_num_threads(),
                          **agreement(fp32, bf16)}), flush=True)


if __name__ == "__main__":
    main()
