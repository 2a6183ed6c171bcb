"""`SamplingParams.logprobs`: log-probabilities of the model's own distribution, only for the
rows that ask, with the same sampling as without them."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import chatllm_engine.engine as engine_module
from chatllm_engine.errors import InvalidRequest
from chatllm_engine.types import GenerationRequest, SamplingParams, TokenLogprobs

from .support import Collector, add, drain, greedy, make_engine, make_eos_setup, run_alone

PROMPT = "Hello world"


def logprobs_of(collector: Collector, request_id: str) -> list[TokenLogprobs]:
    entries: list[TokenLogprobs] = []
    for event in collector.events[request_id]:
        assert event.logprobs is not None
        entries.extend(event.logprobs)
    return entries


def reference_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                       output: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at each output position, from one full forward pass."""
    prompt_ids = tokenizer(prompt).input_ids
    ids = torch.tensor([prompt_ids + output])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float()
    return torch.log_softmax(logits, dim=-1)


def test_greedy_tokens_are_rank_one_with_the_model_logprob_and_sorted_top(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    collector = run_alone(tiny_model, tiny_tokenizer, PROMPT, greedy(12, ignore_eos=True, logprobs=3))
    tokens = collector.tokens("only")
    entries = logprobs_of(collector, "only")
    expected = reference_logprobs(tiny_model, tiny_tokenizer, PROMPT, tokens)

    assert [e.sampled.token_id for e in entries] == tokens
    for position, entry in enumerate(entries):
        row = expected[position]
        assert entry.sampled.rank == 1
        assert entry.sampled.logprob == pytest.approx(float(row[tokens[position]]), abs=1e-4)
        assert entry.sampled.decoded_token == tiny_tokenizer.decode([tokens[position]])
        assert [t.token_id for t in entry.top] == row.topk(3).indices.tolist()
        assert [t.rank for t in entry.top] == [1, 2, 3]
        assert [t.logprob for t in entry.top] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
        assert entry.top[0].token_id == entry.sampled.token_id


def test_sampled_tokens_report_the_raw_model_logprob_and_their_rank(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    sampling = SamplingParams(max_tokens=16, temperature=1.8, seed=5, ignore_eos=True, logprobs=0)
    collector = run_alone(tiny_model, tiny_tokenizer, PROMPT, sampling)
    tokens = collector.tokens("only")
    entries = logprobs_of(collector, "only")
    expected = reference_logprobs(tiny_model, tiny_tokenizer, PROMPT, tokens)

    assert all(e.top == () for e in entries)
    ranks = []
    for position, entry in enumerate(entries):
        row = expected[position]
        assert entry.sampled.logprob == pytest.approx(float(row[tokens[position]]), abs=1e-4)
        ranks.append(entry.sampled.rank)
        assert entry.sampled.rank == int((row > row[tokens[position]]).sum()) + 1
    assert max(ranks) > 1, "precondition: at temperature 1.8 some draw is not the most likely token"


def test_asking_for_logprobs_does_not_change_the_tokens(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    plain = SamplingParams(max_tokens=16, temperature=1.0, seed=3, ignore_eos=True)
    with_logprobs = SamplingParams(max_tokens=16, temperature=1.0, seed=3, ignore_eos=True, logprobs=5)

    assert run_alone(tiny_model, tiny_tokenizer, PROMPT, plain).tokens("only") == \
        run_alone(tiny_model, tiny_tokenizer, PROMPT, with_logprobs).tokens("only")


def test_only_rows_that_ask_get_logprobs_and_theirs_match_a_run_alone(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    collector = Collector()
    add(engine, collector, "plain-a", "The capital of Italy is", greedy(10, ignore_eos=True))
    add(engine, collector, "asks", PROMPT, greedy(10, ignore_eos=True, logprobs=2))
    add(engine, collector, "plain-b", "def add(a, b):", greedy(10, ignore_eos=True))
    drain(engine)
    alone = run_alone(tiny_model, tiny_tokenizer, PROMPT, greedy(10, ignore_eos=True, logprobs=2))

    assert all(e.logprobs is None for rid in ("plain-a", "plain-b") for e in collector.events[rid])
    batched, single = logprobs_of(collector, "asks"), logprobs_of(alone, "only")
    assert [e.sampled.token_id for e in batched] == [e.sampled.token_id for e in single]
    assert [e.sampled.logprob for e in batched] == pytest.approx([e.sampled.logprob for e in single], abs=1e-4)
    assert [[t.token_id for t in e.top] for e in batched] == [[t.token_id for t in e.top] for e in single]


def test_no_logprob_work_when_no_row_asks(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> list[TokenLogprobs]:
        raise AssertionError("logprobs computed for a batch where nobody asked")

    monkeypatch.setattr(engine_module, "token_logprobs", forbidden)
    collector = run_alone(tiny_model, tiny_tokenizer, PROMPT, greedy(6, ignore_eos=True))

    assert len(collector.tokens("only")) == 6
    assert all(e.logprobs is None for e in collector.events["only"])


def test_the_eos_token_has_no_logprob_entry(tiny_model: PreTrainedModel,
                                           tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    setup = make_eos_setup(tiny_model, tiny_tokenizer, PROMPT)
    collector = run_alone(setup.model, tiny_tokenizer, setup.prompt, greedy(30, logprobs=1))
    tokens = collector.tokens("only")

    assert tokens[-1] == setup.eos
    assert [e.sampled.token_id for e in logprobs_of(collector, "only")] == tokens[:-1]


def test_logprobs_are_grouped_like_the_events_tokens(tiny_model: PreTrainedModel,
                                                     tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    collector = run_alone(tiny_model, tiny_tokenizer, PROMPT, greedy(9, ignore_eos=True, logprobs=0),
                          stream_interval=4)

    events = collector.events["only"]
    assert len(events) > 2
    for event in events:
        assert event.logprobs is not None
        assert [e.sampled.token_id for e in event.logprobs] == list(event.token_ids)


@pytest.mark.parametrize("count", [-1, 21])
def test_out_of_range_logprobs_are_refused(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase,
                                           count: int) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    request = GenerationRequest("r", prompt=PROMPT, sampling=SamplingParams(logprobs=count))

    with pytest.raises(InvalidRequest, match="logprobs"):
        engine.add_request(request, Collector().sink("r"))
