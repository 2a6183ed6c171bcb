"""Prompts sharing a prefix: computed once, then taken from the prefix cache."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine import engine as engine_module

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


def test_a_cached_prefix_is_not_computed_again(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[int] = []
    real = engine_module.forward_step

    def counting(model: PreTrainedModel, ids: list[int], *args: object, **kwargs: object) -> torch.Tensor:
        fed.append(len(ids))
        return real(model, ids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "forward_step", counting)
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    first, second = SYSTEM + QUESTIONS[0], SYSTEM + QUESTIONS[1]
    add(engine, out, "first", first, greedy(1))
    drain(engine)
    fed.clear()
    shared = engine._prefixes.cached_length(tiny_tokenizer(second).input_ids)  # noqa: SLF001
    add(engine, out, "second", second, greedy(1))
    drain(engine)

    assert shared >= 16
    assert fed == [len(tiny_tokenizer(second).input_ids) - shared], "only the uncached tail ran"
    assert out.tokens("second") == reference_greedy(tiny_model, tiny_tokenizer, second, 1)
