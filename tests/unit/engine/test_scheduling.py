"""Admission order inside a step: shared prompt prefixes, the prefill budget, prefill first."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.prefix_cache import PrefixCache
from chatllm_engine.scheduler import FcfsScheduler

from .support import Collector, add, drain, greedy, make_engine, reference_greedy

# Longer than the prefix cache's 16-token minimum with the tiny tokenizer.
SYSTEM = "The capital of France is Paris. The capital of Italy is Rome. Hello world, how are you today? "
QUESTIONS = ("I am fine", "thank you", "def add(a, b):", "你好，世界", "Paris. The", "Hello world")


def test_prompts_sharing_a_prefix_generate_what_generate_does(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    prompts = {f"r{i}": SYSTEM + q for i, q in enumerate(QUESTIONS)}
    add(engine, out, "r0", prompts["r0"], greedy(8))  # alone: computes the prefix, caches it
    engine.step()
    for rid in ("r1", "r2", "r3"):  # together: take the prefix from the cache
        add(engine, out, rid, prompts[rid], greedy(8))
    engine.step()
    other = "Hello world, how are you today? I am fine, thank you. The capital of "
    prompts |= {"r4": other + "France", "r5": other + "Italy"}  # a new shared prefix, computed once
    for rid in ("r4", "r5"):
        add(engine, out, rid, prompts[rid], greedy(8))
    drain(engine)

    assert engine._prefixes is not None and engine._prefixes.hits >= 3  # noqa: SLF001
    for rid, prompt in prompts.items():
        assert out.tokens(rid) == reference_greedy(tiny_model, tiny_tokenizer, prompt, 8), rid


def test_the_prefill_budget_counts_only_tokens_the_prefix_cache_does_not_hold(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    prompts = [tiny_tokenizer(SYSTEM + q).input_ids for q in QUESTIONS[:4]]
    cached = PrefixCache(4096)
    cached.add(tuple(prompts[0][:-1]), [])  # what prefilling the first prompt alone caches
    uncached = [len(p) - cached.cached_length(p) for p in prompts[1:]]
    budget = uncached[0] + uncached[1]  # two newcomers fit, the third does not, nor one whole prompt
    assert budget < min(len(p) for p in prompts) and uncached[2] > 0
    engine = make_engine(tiny_model, tiny_tokenizer, max_prefill_tokens=budget)
    out = Collector()
    add(engine, out, "first", SYSTEM + QUESTIONS[0], greedy(20, ignore_eos=True))
    engine.step()
    for i, question in enumerate(QUESTIONS[1:4]):
        add(engine, out, f"r{i}", SYSTEM + question, greedy(20, ignore_eos=True))
    engine.step()

    assert engine.stats.running == 3, "two newcomers whose uncached tokens fit the budget"
    assert engine.stats.waiting == 1


def test_newcomers_are_prefilled_before_running_rows_decode_but_those_wait_one_step_at_most(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_num_seqs=64)
    out = Collector()
    add(engine, out, "running", "Hello world", greedy(40, ignore_eos=True))
    engine.step()
    engine.step()
    before = len(out.tokens("running"))

    add(engine, out, "new0", "thank you", greedy(40, ignore_eos=True))
    engine.step()
    assert len(out.tokens("new0")) == 1, "the newcomer has its first token"
    assert len(out.tokens("running")) == before, "the running row skipped this step's decode"

    progress = []
    for i in range(1, 7):  # a newcomer before every step: the running row still advances
        add(engine, out, f"new{i}", "I am fine", greedy(40, ignore_eos=True))
        engine.step()
        progress.append(len(out.tokens("running")))
    assert progress == [before + 1, before + 1, before + 2, before + 2, before + 3, before + 3]


def test_admission_stops_at_the_prefill_budget_but_always_takes_one() -> None:
    scheduler: FcfsScheduler[str] = FcfsScheduler(
        max_num_seqs=8, max_queue_size=8, kv_cache_tokens=10_000, max_prefill_tokens=100)
    for name, tokens in (("a", 300), ("b", 40), ("c", 40), ("d", 40)):
        scheduler.enqueue(name, tokens, running=0)
    assert scheduler.admit(0, 0) == ["a"]
    assert scheduler.admit(1, 300, prefill_cost=lambda item: 60) == ["b"]
    assert scheduler.admit(2, 300, prefill_cost=lambda item: 50) == ["c", "d"]
