"""Constrained decoding on the default model: validity, the bitmask's cost, and throughput.

    .venv/bin/python scripts/probes/structured_outputs.py [--seeds 8] [--users 16] [--tokens 64]

1. Validity: JSON schemas (enums, integer ranges, string lengths and patterns, arrays, nested
   objects, additionalProperties false), a regex and a choice list, greedy and sampled over
   `--seeds` seeds, all in one batch; each output is parsed and validated (jsonschema, re).
2. The bitmask's cost per decode step at batch 16 and 64 (every row constrained, SmolLM2's
   vocabulary): filling the rows (xgrammar matchers mid-JSON) and applying them to the logits.
3. Throughput: `--users` chat requests at once on a fresh engine, `--tokens` new tokens each,
   unconstrained vs every request under a JSON schema (same prompts, greedy).
Prints one line per measurement; docs/benchmarks.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time
from typing import Any

from _common import load_default_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 20},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "address", "active"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30},
                   "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
REGEX = r"[A-Z][a-z]{2,8} [0-9]{1,3}(\.[0-9])?"
CHOICES = ["positive", "negative", "neutral"]
CASES = [
    ("person", "json", PERSON, "Invent a person and describe them as JSON."),
    ("weather", "json", WEATHER, "What is the weather in Paris for the next three days? Answer as JSON."),
    ("regex", "regex", REGEX, "Name a city and a temperature."),
    ("choice", "choice", CHOICES, "Is 'I love this film' positive, negative or neutral?"),
]


def run_batch(engine: Any, requests: list[Any], counted: list[int] | None = None) -> dict[str, tuple[str, str]]:
    """Queue `requests` at once on a stepping engine; (text, finish reason) per request id.
    Output tokens are added to `counted[0]` when given."""
    texts: dict[str, list[str]] = {r.request_id: [] for r in requests}
    reasons: dict[str, str] = {}
    done = threading.Event()
    lock = threading.Lock()

    def sink_for(rid: str) -> Any:
        def sink(event: Any) -> None:
            if isinstance(event, Exception):
                raise SystemExit(f"{rid} failed: {event}")
            texts[rid].append(event.text)
            if counted is not None:
                counted[0] += event.num_output_tokens
            if event.finished:
                with lock:
                    reasons[rid] = event.finish_reason.value
                    if len(reasons) == len(requests):
                        done.set()
        return sink

    for outcome in engine.add_requests([(r, sink_for(r.request_id)) for r in requests]):
        if isinstance(outcome, Exception):
            raise outcome
    done.wait()
    return {rid: ("".join(parts), reasons[rid]) for rid, parts in texts.items()}


def check_validity(engine: Any, seeds: int) -> None:
    import jsonschema
    from chatllm_wire import structured_output

    from chatllm_engine.types import GenerationRequest, SamplingParams

    requests, expected = [], {}
    for name, kind, value, prompt in CASES:
        spec = structured_output(kind, value)
        for seed in [None, *range(seeds)]:
            params = SamplingParams(max_tokens=256, temperature=0.0 if seed is None else 1.0, seed=seed,
                                    structured=spec)
            rid = f"{name}-{'greedy' if seed is None else seed}"
            requests.append(GenerationRequest(rid, messages=({"role": "user", "content": prompt},), sampling=params))
            expected[rid] = (kind, value)
    start = time.perf_counter()
    outputs = run_batch(engine, requests)
    seconds = time.perf_counter() - start
    valid = 0
    for rid, (text, reason) in sorted(outputs.items()):
        kind, value = expected[rid]
        try:
            if kind == "json":
                jsonschema.validate(json.loads(text), value)
            elif kind == "regex":
                assert re.fullmatch(value, text), text
            else:
                assert text in value, text
            valid += 1
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            print(f"INVALID {rid} ({reason}): {text!r}: {exc}")
    print(f"validity: {valid}/{len(outputs)} outputs parse and validate "
          f"({len(CASES)} constraints x greedy + {seeds} seeds, one batch, {seconds:.1f} s)")
    for name, *_ in CASES:
        print(f"  e.g. {name}: {outputs[f'{name}-greedy'][0]}")


def _without_lengths(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_lengths(v) for k, v in schema.items() if k not in ("minLength", "maxLength")}
    return schema


FREE_STRINGS = _without_lengths(PERSON)
DOCUMENT = ('{"name": "Ada Lovelace", "age": 36, "role": "admin", "tags": ["math", "poetry"], '
            '"address": {"city": "London", "zip": "12345"}, "active": true}')


def bitmask_cost(tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
    """Per decode step with every row constrained: rows walk DOCUMENT (one token per step,
    row r starting r tokens in, so the batch mixes states), and `mask_logits` fills and
    applies their masks. PERSON has length-limited strings; FREE_STRINGS is the same schema
    without the length limits."""
    import torch
    from chatllm_wire import structured_output

    from chatllm_engine.constraints import GrammarCache, mask_logits

    cache = GrammarCache(tokenizer, vocab_size, eos_ids)
    ids = tokenizer(DOCUMENT, add_special_tokens=False).input_ids
    for label, schema in (("length-limited strings", PERSON), ("free strings", FREE_STRINGS)):
        spec = structured_output("json", schema)
        start = time.perf_counter()
        cache.compile(spec)
        compiled_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        cache.compile(spec)
        cached_ms = 1000 * (time.perf_counter() - start)
        for batch in (16, 64):
            constraints = [cache.constraint(spec) for _ in range(batch)]
            offsets = [row % (len(ids) // 2) for row in range(batch)]
            for row, c in enumerate(constraints):
                for t in ids[:offsets[row]]:
                    c.accept(t)
            logits = torch.randn(batch, vocab_size)
            steps = []
            for step in range(len(ids) // 2):
                t0 = time.perf_counter()
                mask_logits(logits, constraints)
                steps.append(time.perf_counter() - t0)
                for row, c in enumerate(constraints):
                    c.accept(ids[offsets[row] + step])
            print(f"bitmask, {label}, batch {batch}: {1000 * statistics.mean(steps):.2f} ms per step on average, "
                  f"median {1000 * statistics.median(steps):.2f}, max {1000 * max(steps):.1f} "
                  f"({len(steps)} steps; compile {compiled_ms:.0f} ms, cached {cached_ms:.3f} ms)")


def throughput(engine: Any, users: int, tokens: int) -> None:
    """Output tokens per second of `users` requests at once, unconstrained vs each request
    under a JSON schema (greedy; alternating runs, best of two each)."""
    from chatllm_wire import structured_output
    from loadtest.bench import chat_messages

    from chatllm_engine.types import GenerationRequest, SamplingParams

    schemas = {
        # Cannot end before `tokens` tokens (a string of at least 400 characters): as much
        # work as the unconstrained run, with a length-limited string (the costly case).
        "schema, string minLength 400": {"type": "object",
                                         "properties": {"answer": {"type": "string", "minLength": 400}},
                                         "required": ["answer"], "additionalProperties": False},
        # Free text in a JSON string: may end early, so the rate counts the tokens generated.
        "schema, free string": {"type": "object", "properties": {"answer": {"type": "string"}},
                                "required": ["answer"], "additionalProperties": False},
    }
    runs: list[tuple[str, Any]] = [("unconstrained", None)]
    runs += [(label, structured_output("json", schema)) for label, schema in schemas.items()]
    results: dict[str, list[tuple[float, int]]] = {}
    for label, structured in runs * 2:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, structured=structured)
        requests = [GenerationRequest(f"{label}-{i}-{time.monotonic_ns()}", messages=tuple(m), sampling=params)
                    for i, m in enumerate(chat_messages(users))]
        counted = [0]
        start = time.perf_counter()
        run_batch(engine, requests, counted)
        results.setdefault(label, []).append((counted[0] / (time.perf_counter() - start), counted[0]))
    plain = max(rate for rate, _ in results["unconstrained"])
    line = [f"throughput, {users} requests x up to {tokens} tokens (best of 2): unconstrained {plain:.1f} tok/s"]
    for label in schemas:
        rate, count = max(results[label])
        line.append(f"{label} {rate:.1f} tok/s ({count} tokens, ratio {rate / plain:.2f})")
    print("; ".join(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["validity", "bitmask", "throughput"])
    args = parser.parse_args()
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from chatllm_engine.config import EngineConfig
    from chatllm_engine.engine import LLMEngine
    from loadtest.layouts import model_parameters
    from _common import ROOT, MODEL

    model, tokenizer = load_default_model()
    config = EngineConfig.from_parameters(model_parameters(ROOT / "model_repository" / MODEL / "config.pbtxt"))
    engine = LLMEngine(model, tokenizer, dataclasses.replace(config, max_num_seqs=128, kv_cache_tokens=1 << 20))
    with ThreadPoolExecutor(1) as stepping:
        running = stepping.submit(engine.run)
        try:
            if "validity" not in args.skip:
                check_validity(engine, args.seeds)
            if "bitmask" not in args.skip:
                bitmask_cost(tokenizer, int(model.config.vocab_size), engine._eos_ids)  # noqa: SLF001
            if "throughput" not in args.skip:
                throughput(engine, args.users, args.tokens)
        finally:
            engine.stop()
            running.result()


if __name__ == "__main__":
    main()
