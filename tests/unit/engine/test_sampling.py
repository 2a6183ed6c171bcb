"""Each sampling parameter changes generation the way OpenAI/vLLM clients expect."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.types import FinishReason, SamplingParams
from chatllm_engine.text import REPLACEMENT_CHAR

from .support import (Collector, EosSetup, add, drain, first_new_token_at, greedy, make_engine, make_eos_setup,
                      reference_greedy, run_alone)

REPETITIVE_PROMPT = "The capital of Italy is"  # the tiny model's greedy output loops on this one
PROMPT = "Hello world"


def repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


def sampled(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str = PROMPT,
            **params: object) -> list[int]:
    sampling = SamplingParams(**{"max_tokens": 24, "ignore_eos": True, **params})  # type: ignore[arg-type]
    return run_alone(model, tokenizer, prompt, sampling).tokens("only")


# ---- greedy and its equivalents ------------------------------------------------------------


def test_temperature_zero_is_greedy_and_ignores_top_p_top_k(tiny_model: PreTrainedModel,
                                                            tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    expected = reference_greedy(tiny_model, tiny_tokenizer, PROMPT, 24, stop_at_eos=False)

    assert sampled(tiny_model, tiny_tokenizer, temperature=0.0) == expected
    assert sampled(tiny_model, tiny_tokenizer, temperature=0.0, top_p=0.5, top_k=50, seed=3) == expected


def test_top_k_one_is_greedy(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    expected = reference_greedy(tiny_model, tiny_tokenizer, PROMPT, 24, stop_at_eos=False)

    assert sampled(tiny_model, tiny_tokenizer, temperature=1.0, top_k=1) == expected


def test_tiny_top_p_keeps_only_the_most_likely_token(tiny_model: PreTrainedModel,
                                                     tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    expected = reference_greedy(tiny_model, tiny_tokenizer, PROMPT, 24, stop_at_eos=False)

    assert sampled(tiny_model, tiny_tokenizer, temperature=1.0, top_p=1e-6) == expected


def test_top_k_draws_only_among_the_k_most_likely_tokens(tiny_model: PreTrainedModel,
                                                         tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    prompt_ids = tiny_tokenizer(PROMPT).input_ids
    unrestricted = sampled(tiny_model, tiny_tokenizer, temperature=1.5, seed=11)
    restricted = sampled(tiny_model, tiny_tokenizer, temperature=1.5, seed=11, top_k=3)

    def ranks(output: list[int]) -> list[int]:
        """Rank of each output token among the model's logits at its position (0 = most likely)."""
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt_ids + output])).logits[0]
        steps = logits[len(prompt_ids) - 1:-1]
        return [int((row > row[token]).sum()) for row, token in zip(steps, output)]

    assert max(ranks(restricted)) < 3
    assert max(ranks(unrestricted)) >= 3, "without top_k the draw must reach beyond the top 3"


# ---- seeds -----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_output(tiny_model: PreTrainedModel,
                                         tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    first = run_alone(tiny_model, tiny_tokenizer, PROMPT, SamplingParams(max_tokens=24, seed=1234, ignore_eos=True))
    # Same seed again, this time sharing the batch with other sampling requests.
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    add(engine, out, "noise", "I am fine", SamplingParams(max_tokens=30, ignore_eos=True))
    engine.step()
    add(engine, out, "again", PROMPT, SamplingParams(max_tokens=24, seed=1234, ignore_eos=True))
    add(engine, out, "twin", PROMPT, SamplingParams(max_tokens=24, seed=1234, ignore_eos=True))
    drain(engine)

    assert out.tokens("again") == first.tokens("only")
    assert out.tokens("twin") == first.tokens("only")
    assert out.text("again") == first.text("only")


def test_different_seeds_give_different_outputs(tiny_model: PreTrainedModel,
                                                tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    outputs = {tuple(sampled(tiny_model, tiny_tokenizer, seed=seed)) for seed in (1, 2, 3)}

    assert len(outputs) == 3


def test_unseeded_sampling_follows_the_engine_seed(tiny_model: PreTrainedModel,
                                                   tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    sampling = SamplingParams(max_tokens=24, ignore_eos=True)

    def output(engine_seed: int) -> list[int]:
        return run_alone(tiny_model, tiny_tokenizer, PROMPT, sampling, seed=engine_seed).tokens("only")

    assert output(5) == output(5)
    assert output(5) != output(6)


# ---- penalties -------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [
    {"repetition_penalty": 1.5},
    {"presence_penalty": 1.0},
    {"frequency_penalty": 1.0},
])
def test_penalties_change_greedy_output_and_reduce_repeats(tiny_model: PreTrainedModel,
                                                           tiny_tokenizer: PreTrainedTokenizerBase,
                                                           penalty: dict[str, float]) -> None:
    plain = sampled(tiny_model, tiny_tokenizer, REPETITIVE_PROMPT, temperature=0.0, max_tokens=40)
    penalised = sampled(tiny_model, tiny_tokenizer, REPETITIVE_PROMPT, temperature=0.0, max_tokens=40, **penalty)

    assert repeats(plain) >= 20, "precondition: plain greedy output loops"
    assert penalised != plain
    assert repeats(penalised) < repeats(plain) // 4


def test_penalties_of_one_row_do_not_touch_the_others(tiny_model: PreTrainedModel,
                                                      tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    add(engine, out, "penalised", REPETITIVE_PROMPT, greedy(30, ignore_eos=True, frequency_penalty=2.0))
    add(engine, out, "plain", REPETITIVE_PROMPT, greedy(30, ignore_eos=True))
    add(engine, out, "sampled", PROMPT, SamplingParams(max_tokens=30, ignore_eos=True, seed=9))
    drain(engine)

    assert out.tokens("plain") == reference_greedy(tiny_model, tiny_tokenizer, REPETITIVE_PROMPT, 30,
                                                   stop_at_eos=False)
    assert out.tokens("sampled") == sampled(tiny_model, tiny_tokenizer, seed=9, max_tokens=30)
    assert repeats(out.tokens("penalised")) == 0


# ---- stopping --------------------------------------------------------------------------------


def test_stop_token_ids_end_the_request_with_stop(tiny_model: PreTrainedModel,
                                                  tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    reference = reference_greedy(tiny_model, tiny_tokenizer, PROMPT, 30, stop_at_eos=False)
    index = first_new_token_at(reference, 3)
    later = first_new_token_at(reference, index + 1)

    out = run_alone(tiny_model, tiny_tokenizer, PROMPT,
                    greedy(30, stop_token_ids=(reference[later], reference[index])))

    assert out.finish("only") is FinishReason.STOP
    assert out.tokens("only") == reference[:index + 1]


@pytest.fixture(scope="module")
def eos_setup(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> EosSetup:
    return make_eos_setup(tiny_model, tiny_tokenizer, PROMPT)


def test_the_models_eos_ends_the_request(eos_setup: EosSetup, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    out = run_alone(eos_setup.model, tiny_tokenizer, PROMPT, greedy(30))

    assert out.finish("only") is FinishReason.STOP
    assert out.tokens("only") == eos_setup.reference[:eos_setup.eos_index + 1]
    assert out.text("only") == tiny_tokenizer.decode(eos_setup.reference[:eos_setup.eos_index]).rstrip(REPLACEMENT_CHAR)


def test_ignore_eos_generates_through_eos_until_max_tokens(eos_setup: EosSetup,
                                                           tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    out = run_alone(eos_setup.model, tiny_tokenizer, PROMPT, greedy(20, ignore_eos=True))

    assert out.finish("only") is FinishReason.LENGTH
    assert out.tokens("only") == eos_setup.reference[:20]


def test_min_tokens_suppresses_eos_until_reached(eos_setup: EosSetup,
                                                 tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    eos = eos_setup.eos
    min_tokens = eos_setup.eos_index + 4

    out = run_alone(eos_setup.model, tiny_tokenizer, PROMPT, greedy(30, min_tokens=min_tokens))

    tokens = out.tokens("only")
    assert len(tokens) >= min_tokens
    assert eos not in tokens[:min_tokens]
    assert tiny_tokenizer.eos_token_id not in tokens[:min_tokens]
    assert tokens[:eos_setup.eos_index] == eos_setup.reference[:eos_setup.eos_index]


def test_min_tokens_above_max_tokens_still_ends_at_max_tokens(
        eos_setup: EosSetup, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    out = run_alone(eos_setup.model, tiny_tokenizer, PROMPT, greedy(3, min_tokens=10))

    assert out.finish("only") is FinishReason.LENGTH
    assert len(out.tokens("only")) == 3
