"""Chunked prefill mixed with decoding: one forward per step under max_num_batched_tokens."""

from __future__ import annotations

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.scheduler import plan_tokens

from .support import PROMPTS, Collector, add, drain, greedy, make_engine, reference_greedy

LONG = " ".join(PROMPTS) * 3  # ~200 tokens with the tiny tokenizer


@pytest.mark.parametrize("budget", [3, 17, 64])
def test_chunked_prefill_generates_what_one_pass_prefill_does(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase, budget: int) -> None:
    prompts = {"long": LONG, "mid": " ".join(PROMPTS[:4]), "short": PROMPTS[1]}
    one_pass, chunked = Collector(), Collector()
    for engine, out in ((make_engine(tiny_model, tiny_tokenizer, max_num_batched_tokens=4096), one_pass),
                        (make_engine(tiny_model, tiny_tokenizer, max_num_batched_tokens=budget), chunked)):
        for rid, prompt in prompts.items():
            add(engine, out, rid, prompt, greedy(12, ignore_eos=True))
        drain(engine)

    for rid, prompt in prompts.items():
        assert chunked.tokens(rid) == one_pass.tokens(rid), rid
        assert chunked.tokens(rid) == reference_greedy(tiny_model, tiny_tokenizer, prompt, 12, stop_at_eos=False), rid


def test_a_long_prompt_never_stalls_running_streams_nor_a_later_short_prompt(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    budget = 16
    engine = make_engine(tiny_model, tiny_tokenizer, max_num_batched_tokens=budget)
    out = Collector()
    add(engine, out, "running", PROMPTS[0], greedy(60, ignore_eos=True))
    engine.step()
    assert len(out.tokens("running")) == 1
    long_tokens = len(tiny_tokenizer(LONG).input_ids)
    assert long_tokens > 8 * budget
    add(engine, out, "long", LONG, greedy(4, ignore_eos=True))
    engine.step()
    add(engine, out, "short", PROMPTS[5], greedy(4, ignore_eos=True))

    steps = 0
    while not out.tokens("long"):
        before = len(out.tokens("running"))
        engine.step()
        steps += 1
        assert len(out.tokens("running")) == before + 1, "the running stream decodes in every step"
    assert steps >= long_tokens // budget - 1, "the long prompt was prefilled in chunks"
    first_short = next(i for i, e in enumerate(out.events["short"]) if e.token_ids)
    assert first_short == 0 and out.tokens("short"), "the short prompt got its first token first"
    drain(engine)
    assert out.tokens("long") == reference_greedy(tiny_model, tiny_tokenizer, LONG, 4, stop_at_eos=False)


def test_every_decoding_row_feeds_one_token_and_prefill_shares_the_rest() -> None:
    assert plan_tokens([1, 1, 1], 2) == [1, 1, 1], "decoding rows are never left out"
    assert plan_tokens([1, 100, 10], 32) == [1, 21, 10], "the oldest gets its share, then shortest first"
    assert plan_tokens([100, 5, 3], 40) == [32, 5, 3]
    assert plan_tokens([1] * 40 + [50], 32) == [1] * 40 + [8], "prefill progresses behind many decoders"
    assert plan_tokens([7], 512) == [7]
    assert sum(plan_tokens([1, 1, 300, 200, 2], 64)) == 64
