"""add_request rejects bad requests with typed errors, before anything is queued."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.errors import ContextTooLong, EngineError, EngineOverloaded, InvalidRequest
from chatllm_engine.types import FinishReason, GenerationRequest, SamplingParams

from .support import PROMPTS, Collector, add, drain, greedy, make_engine

PROMPT = PROMPTS[0]


def prompt_len(tokenizer: PreTrainedTokenizerBase, prompt: str = PROMPT) -> int:
    return len(tokenizer(prompt).input_ids)


def test_prompt_plus_max_tokens_over_max_model_len_is_context_too_long(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_model_len=64)
    n = prompt_len(tiny_tokenizer)

    with pytest.raises(ContextTooLong) as excinfo:
        add(engine, Collector(), "long", PROMPT, greedy(64 - n + 1))

    message = str(excinfo.value)
    assert "maximum context length is 64 tokens" in message
    assert f"you requested 65 tokens ({n} in the prompt, {64 - n + 1} for the completion)" in message
    assert not engine.has_work()


def test_a_request_that_just_fits_max_model_len_runs(tiny_model: PreTrainedModel,
                                                     tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_model_len=32)
    out = Collector()

    add(engine, out, "fits", PROMPT, greedy(32 - prompt_len(tiny_tokenizer), ignore_eos=True))
    drain(engine)

    assert len(out.tokens("fits")) == 32 - prompt_len(tiny_tokenizer)


def test_max_model_len_defaults_to_the_models_context(tiny_model: PreTrainedModel,
                                                      tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    n = prompt_len(tiny_tokenizer)

    assert engine.max_model_len == tiny_model.config.max_position_embeddings == 512
    with pytest.raises(ContextTooLong, match="maximum context length is 512 tokens"):
        add(engine, Collector(), "long", PROMPT, greedy(512 - n + 1))


def test_unset_max_tokens_takes_the_rest_of_the_context(tiny_model: PreTrainedModel,
                                                        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_model_len=24)
    out = Collector()

    add(engine, out, "rest", PROMPT, SamplingParams(temperature=0.0, ignore_eos=True))
    drain(engine)

    assert len(out.tokens("rest")) == 24 - prompt_len(tiny_tokenizer)


def test_a_prompt_filling_the_whole_context_is_context_too_long(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    n = prompt_len(tiny_tokenizer, PROMPTS[6])
    engine = make_engine(tiny_model, tiny_tokenizer, max_model_len=n)

    with pytest.raises(ContextTooLong, match=f"{n} in the prompt"):
        add(engine, Collector(), "full", PROMPTS[6], SamplingParams())


def test_over_the_kv_budget_is_context_too_long(tiny_model: PreTrainedModel,
                                                tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, kv_cache_tokens=32)
    n = prompt_len(tiny_tokenizer)

    with pytest.raises(ContextTooLong) as excinfo:
        add(engine, Collector(), "big", PROMPT, greedy(40))

    assert "kv_cache_tokens" in str(excinfo.value)
    assert "is 32 tokens" in str(excinfo.value)
    assert f"you requested {n + 40} tokens" in str(excinfo.value)
    assert not engine.has_work()


def test_context_too_long_is_an_invalid_request() -> None:
    # The adapter maps InvalidRequest to INVALID_ARG (HTTP 400); ContextTooLong must go the same way.
    assert issubclass(ContextTooLong, InvalidRequest)
    assert issubclass(InvalidRequest, EngineError)
    assert issubclass(EngineOverloaded, EngineError)


@pytest.mark.parametrize("bad", [
    {"max_tokens": 0},
    {"temperature": -0.1},
    {"temperature": 2.5},
    {"top_p": 0.0},
    {"top_p": 1.01},
    {"top_k": -2},
    {"repetition_penalty": 0.0},
    {"presence_penalty": 2.5},
    {"presence_penalty": -2.5},
    {"frequency_penalty": 2.01},
    {"frequency_penalty": -3.0},
    {"min_tokens": -1},
])
def test_bad_sampling_values_are_invalid_requests(tiny_model: PreTrainedModel,
                                                  tiny_tokenizer: PreTrainedTokenizerBase, bad: dict[str, Any]) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    key = next(iter(bad))

    with pytest.raises(InvalidRequest, match=key):
        add(engine, Collector(), "bad", PROMPT, SamplingParams(**bad))

    assert not engine.has_work()


@pytest.mark.parametrize("edge", [
    {"temperature": 0.0}, {"temperature": 2.0}, {"top_p": 1.0}, {"top_k": -1}, {"top_k": 0},
    {"presence_penalty": -2.0}, {"frequency_penalty": 2.0}, {"min_tokens": 0}, {"max_tokens": 1},
    {"seed": -1},
])
def test_edge_sampling_values_are_accepted(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase,
                                           edge: dict[str, Any]) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()

    add(engine, out, "edge", PROMPT, SamplingParams(**{"max_tokens": 2, **edge}))
    drain(engine)

    assert len(out.finished_events("edge")) == 1


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_out_of_range_seed_is_an_invalid_request(tiny_model: PreTrainedModel,
                                                 tiny_tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)

    with pytest.raises(InvalidRequest, match="seed"):
        add(engine, Collector(), "seeded", PROMPT, SamplingParams(seed=seed))


@pytest.mark.parametrize("bad_id", [-1, 10_000])
def test_prompt_token_ids_outside_the_vocabulary_are_invalid_requests(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase, bad_id: int) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    ids = (*tiny_tokenizer(PROMPT).input_ids, bad_id)

    with pytest.raises(InvalidRequest):
        engine.add_request(GenerationRequest("ids", prompt_token_ids=ids), Collector().sink("ids"))


def test_full_queue_raises_overloaded(tiny_model: PreTrainedModel,
                                      tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_num_seqs=1, max_queue_size=2)
    out = Collector()
    add(engine, out, "r0", PROMPT, greedy(3, ignore_eos=True))
    engine.step()  # r0 fills the batch
    add(engine, out, "r1", PROMPT, greedy(3, ignore_eos=True))
    add(engine, out, "r2", PROMPT, greedy(3, ignore_eos=True))

    with pytest.raises(EngineOverloaded, match="2 waiting"):
        add(engine, out, "r3", PROMPT, greedy(3, ignore_eos=True))
    drain(engine)
    add(engine, out, "r4", PROMPT, greedy(3, ignore_eos=True))  # room again once the queue drained
    drain(engine)

    assert sorted(rid for rid in out.events if out.finished_events(rid)) == ["r0", "r1", "r2", "r4"]
    assert not out.events["r3"]


def test_zero_max_queue_size_still_serves_up_to_max_num_seqs(tiny_model: PreTrainedModel,
                                                             tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, max_num_seqs=2, max_queue_size=0)
    out = Collector()

    add(engine, out, "r0", PROMPT, greedy(3, ignore_eos=True))
    add(engine, out, "r1", PROMPT, greedy(3, ignore_eos=True))
    with pytest.raises(EngineOverloaded):
        add(engine, out, "r2", PROMPT, greedy(3, ignore_eos=True))
    drain(engine)

    assert out.finish("r0") is out.finish("r1") is FinishReason.LENGTH


@pytest.mark.parametrize("request_kwargs", [
    {"prompt": ""},
    {"prompt": None},
    {"messages": ()},
    {"prompt_token_ids": ()},
])
def test_empty_prompts_are_invalid_requests(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase,
                                            request_kwargs: dict[str, Any]) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)

    with pytest.raises(InvalidRequest, match="empty"):
        engine.add_request(GenerationRequest("empty", **request_kwargs), Collector().sink("empty"))

    assert not engine.has_work()


def test_chat_messages_go_through_the_tokenizers_chat_template(tiny_model: PreTrainedModel,
                                                               tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好, world"})
    rendered = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好, world<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert tiny_tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True) == rendered
    expected_ids = tiny_tokenizer(rendered, add_special_tokens=False).input_ids
    assert expected_ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3

    count = engine.add_request(GenerationRequest("chat", messages=messages, sampling=greedy(6)), out.sink("chat"))
    drain(engine)

    assert count == len(expected_ids)
    assert out.events["chat"][0].num_input_tokens == count
    by_ids = Collector()
    engine.add_request(GenerationRequest("ids", prompt_token_ids=tuple(expected_ids), sampling=greedy(6)),
                       by_ids.sink("ids"))
    drain(engine)
    assert out.tokens("chat") == by_ids.tokens("ids")


def test_messages_the_chat_template_refuses_are_invalid_requests(tiny_model: PreTrainedModel,
                                                                 tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    strict = copy.deepcopy(tiny_tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] not in ('user', 'assistant') %}"
                            "{{ raise_exception('unsupported role ' + m['role']) }}{% endif %}"
                            "{{ m['content'] }}{% endfor %}")
    engine = make_engine(tiny_model, strict)

    with pytest.raises(InvalidRequest, match="unsupported role system"):
        engine.add_request(GenerationRequest("chat", messages=({"role": "system", "content": "x"},)),
                           Collector().sink("chat"))
    assert not engine.has_work()
