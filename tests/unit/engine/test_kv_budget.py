"""The KV budget (kv_cache_tokens) is a hard cap on the batch's cache slots, even in a burst."""

from __future__ import annotations

import functools

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.engine import LLMEngine
from chatllm_engine.types import FinishReason
from chatllm_engine.text import REPLACEMENT_CHAR

from .support import PROMPTS, Collector, add, drain, greedy, make_engine, reference_greedy

BUDGET = 600
BURST = 64
MAX_TOKENS = 40


def test_a_burst_stays_within_the_kv_budget_and_every_request_completes(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, kv_cache_tokens=BUDGET, max_num_seqs=64)
    out = Collector()
    plan = {f"r{i:02d}": PROMPTS[i % len(PROMPTS)] for i in range(BURST)}
    for rid, prompt in plan.items():
        add(engine, out, rid, prompt, greedy(MAX_TOKENS))
    seen_slots: list[int] = []

    def within_budget(e: LLMEngine) -> None:
        slots = sum(s.kv.capacity for s in e._running if s.kv is not None)  # noqa: SLF001
        seen_slots.append(slots)
        assert slots <= BUDGET
        assert e.stats.kv_slots == slots
        assert e.stats.peak_kv_slots <= BUDGET

    drain(engine, after_step=within_budget)

    assert max(seen_slots) > BUDGET // 2, "the budget should actually be used"
    assert engine.stats.peak_kv_slots == max(seen_slots)
    assert engine.stats.preemptions > 0, "this burst is sized to force preemptions"
    reference = functools.lru_cache(maxsize=None)(
        lambda prompt: reference_greedy(tiny_model, tiny_tokenizer, prompt, MAX_TOKENS))
    for rid, prompt in plan.items():
        assert len(out.finished_events(rid)) == 1, rid
        assert out.finish(rid) in (FinishReason.STOP, FinishReason.LENGTH)
        assert out.tokens(rid) == reference(prompt), rid
        # Text streamed across a preemption is still exactly the decode of the tokens.
        decoded = tiny_tokenizer.decode(out.tokens(rid), skip_special_tokens=True)
        assert out.text(rid) == decoded.rstrip(REPLACEMENT_CHAR)
    assert (engine.stats.running, engine.stats.waiting, engine.stats.kv_slots) == (0, 0, 0)


def test_max_num_seqs_caps_the_batch(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_num_seqs=3)
    out = Collector()
    for i in range(8):
        add(engine, out, f"r{i}", PROMPTS[i], greedy(6, ignore_eos=True))
    sizes: list[int] = []

    drain(engine, after_step=lambda e: sizes.append(e.stats.running))

    assert max(sizes) == 3
    assert engine.stats.max_batch_size == 3
    assert all(out.finish(f"r{i}") is FinishReason.LENGTH for i in range(8))


def test_requests_are_admitted_first_come_first_served(tiny_model: PreTrainedModel,
                                                       tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_num_seqs=2)
    out = Collector()
    for i in range(6):  # later requests have shorter prompts: FCFS must not favour them
        add(engine, out, f"r{i}", PROMPTS[6 - i], greedy(3, ignore_eos=True))
    first_tokens: list[set[str]] = []

    def record(e: LLMEngine) -> None:
        started = {rid for rid, events in out.events.items() if events}
        first_tokens.append(started - set().union(*first_tokens))

    drain(engine, after_step=record)

    assert [s for s in first_tokens if s] == [{"r0", "r1"}, {"r2", "r3"}, {"r4", "r5"}]


def test_a_burst_of_long_prompts_stays_within_the_kv_budget(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    budget = 700
    engine = make_engine(tiny_model, tiny_tokenizer, kv_cache_tokens=budget, max_num_batched_tokens=48)
    out = Collector()
    plan = {f"r{i:02d}": " ".join(PROMPTS[i % 8:] + PROMPTS[:i % 8]) * (1 + i % 3) for i in range(12)}
    assert max(len(tiny_tokenizer(p).input_ids) for p in plan.values()) > budget // 4
    for rid, prompt in plan.items():
        add(engine, out, rid, prompt, greedy(16, ignore_eos=True))
    held: list[int] = []

    def within_budget(e: LLMEngine) -> None:
        held.append(e.stats.kv_slots)
        assert e.stats.kv_slots == sum(s.kv.capacity for s in e._running if s.kv is not None)  # noqa: SLF001
        assert e.stats.kv_slots <= budget

    drain(engine, after_step=within_budget)

    assert max(held) > budget // 2
    for rid, prompt in plan.items():
        assert out.tokens(rid) == reference_greedy(tiny_model, tiny_tokenizer, prompt, 16, stop_at_eos=False), rid
    assert engine.stats.kv_slots == 0
