"""Continuous batching must not change what each request generates."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.types import FinishReason, GenerationRequest
from chatllm_engine.text import REPLACEMENT_CHAR

from .support import PROMPTS, Collector, add, drain, greedy, make_engine, reference_greedy, run_alone


def test_batched_greedy_matches_generate_with_joins_and_departures(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    # Different max_tokens so that rows leave (filter) while others keep going.
    plan = {f"r{i}": (prompt, 6 + 5 * i) for i, prompt in enumerate(PROMPTS)}
    lengths = {len(tiny_tokenizer(p).input_ids) for p, _ in plan.values()}
    assert len(lengths) >= 4, "the prompts must differ in length to exercise left padding"

    for rid in ("r0", "r1", "r2"):
        add(engine, out, rid, *plan[rid][:1], greedy(plan[rid][1]))
    for _ in range(3):
        engine.step()
    assert engine.stats.running == 3
    for rid in ("r3", "r4", "r5"):  # join a running batch mid-way
        add(engine, out, rid, plan[rid][0], greedy(plan[rid][1]))
    while not out.finished_events("r0"):
        engine.step()
    for rid in ("r6", "r7"):  # join after others left the batch
        add(engine, out, rid, plan[rid][0], greedy(plan[rid][1]))
    drain(engine)

    assert engine.stats.max_batch_size >= 6
    assert engine.stats.prefills >= 3
    for rid, (prompt, max_tokens) in plan.items():
        expected = reference_greedy(tiny_model, tiny_tokenizer, prompt, max_tokens)
        assert out.tokens(rid) == expected, rid
        assert len(out.finished_events(rid)) == 1


def test_every_event_describes_its_request(tiny_model: PreTrainedModel,
                                           tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    prompt = PROMPTS[1]
    num_prompt = add(engine, out, "a", prompt, greedy(8, ignore_eos=True))
    drain(engine)

    events = out.events["a"]
    assert num_prompt == len(tiny_tokenizer(prompt).input_ids)
    assert all(e.num_input_tokens == num_prompt for e in events)
    assert all(e.num_output_tokens == len(e.token_ids) == 1 for e in events)
    assert [e.finished for e in events] == [False] * 7 + [True]
    assert engine.stats.output_tokens == 8


def test_max_tokens_ends_with_length_after_exactly_that_many_tokens(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    for max_tokens in (1, 7):
        out = run_alone(tiny_model, tiny_tokenizer, PROMPTS[0], greedy(max_tokens, ignore_eos=True))

        assert out.finish("only") is FinishReason.LENGTH
        assert len(out.tokens("only")) == max_tokens
        assert sum(e.num_output_tokens for e in out.events["only"]) == max_tokens


def test_streamed_text_is_the_decoded_output(tiny_model: PreTrainedModel,
                                             tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    for i, prompt in enumerate(PROMPTS):
        add(engine, out, f"r{i}", prompt, greedy(30))
    drain(engine)

    for i in range(len(PROMPTS)):
        tokens = out.tokens(f"r{i}")
        assert out.text(f"r{i}") == tiny_tokenizer.decode(tokens, skip_special_tokens=True).rstrip(REPLACEMENT_CHAR)


def test_stream_interval_groups_tokens_and_sends_the_rest_with_the_end(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    sampling = greedy(14, ignore_eos=True)
    every_token = run_alone(tiny_model, tiny_tokenizer, PROMPTS[2], sampling)
    grouped = run_alone(tiny_model, tiny_tokenizer, PROMPTS[2], sampling, stream_interval=4)

    events = grouped.events["only"]
    # The first token goes out at once (time to first token), then groups of 4, the rest at the end.
    assert [e.num_output_tokens for e in events] == [1, 4, 4, 4, 1]
    assert all(len(e.token_ids) == e.num_output_tokens for e in events)
    assert [e.finished for e in events] == [False, False, False, False, True]
    assert sum(e.num_output_tokens for e in events) == 14
    assert grouped.tokens("only") == every_token.tokens("only")
    assert grouped.text("only") == every_token.text("only")


def test_stream_interval_final_event_carries_the_last_group(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    grouped = run_alone(tiny_model, tiny_tokenizer, PROMPTS[2], greedy(9, ignore_eos=True), stream_interval=4)

    assert [e.num_output_tokens for e in grouped.events["only"]] == [1, 4, 4]
    assert grouped.events["only"][-1].finish_reason is FinishReason.LENGTH


def test_prompt_token_ids_are_used_as_given(tiny_model: PreTrainedModel,
                                            tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    ids = tuple(tiny_tokenizer(PROMPTS[3]).input_ids)

    count = engine.add_request(GenerationRequest("ids", prompt_token_ids=ids, sampling=greedy(10)), out.sink("ids"))
    drain(engine)

    assert count == len(ids)
    assert out.tokens("ids") == reference_greedy(tiny_model, tiny_tokenizer, PROMPTS[3], 10)
