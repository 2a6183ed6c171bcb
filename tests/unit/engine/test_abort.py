"""Cancellation: abort(id) frees the request's batch row at the next step, and only that one."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.engine import LLMEngine
from chatllm_engine.types import FinishReason

from .support import PROMPTS, Collector, add, drain, greedy, make_engine

PLAN = {"a": (PROMPTS[0], 20), "b": (PROMPTS[6], 30), "c": (PROMPTS[2], 25)}


def start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **config: object) -> tuple[LLMEngine, Collector]:
    """A fresh engine with the three requests of PLAN queued."""
    engine = make_engine(model, tokenizer, **config)
    out = Collector()
    for rid, (prompt, max_tokens) in PLAN.items():
        add(engine, out, rid, prompt, greedy(max_tokens, ignore_eos=True))
    return engine, out


def test_aborting_a_running_request_frees_its_row_and_spares_the_others(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    baseline_engine, baseline = start(tiny_model, tiny_tokenizer)
    drain(baseline_engine)

    engine, out = start(tiny_model, tiny_tokenizer)
    for _ in range(4):
        engine.step()
    assert engine.stats.running == 3
    assert len(engine._running) == 3  # noqa: SLF001
    slots_before = engine.stats.kv_slots
    slots_of_b = next(s.kv.capacity for s in engine._running if s.request_id == "b")  # noqa: SLF001
    emitted = out.tokens("b")

    engine.abort("b")
    engine.step()

    assert engine.stats.running == 2
    assert len(engine._running) == 2  # noqa: SLF001
    # Its KV freed at once, and the others' did not move.
    assert engine.stats.kv_slots == slots_before - slots_of_b
    last = out.events["b"][-1]
    assert last.finish_reason is FinishReason.ABORT
    assert (last.text, last.num_output_tokens, last.token_ids) == ("", 0, ())
    assert last.num_input_tokens == len(tiny_tokenizer(PLAN["b"][0]).input_ids)
    events_of_b = len(out.events["b"])

    drain(engine)

    assert len(out.events["b"]) == events_of_b, "no event after the abort"
    assert out.tokens("b") == emitted == baseline.tokens("b")[:len(emitted)]
    for rid in ("a", "c"):
        assert out.finish(rid) is FinishReason.LENGTH
        assert out.tokens(rid) == baseline.tokens(rid)


def test_aborting_a_queued_request_removes_it_from_the_queue(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine, out = start(tiny_model, tiny_tokenizer, max_num_seqs=1)
    engine.step()
    assert (engine.stats.running, engine.stats.waiting) == (1, 2)

    engine.abort("c")
    engine.step()

    assert engine.stats.waiting == 1
    assert [e.finish_reason for e in out.events["c"]] == [FinishReason.ABORT]
    drain(engine)
    assert [e.finish_reason for e in out.events["c"]] == [FinishReason.ABORT]
    assert out.finish("a") is out.finish("b") is FinishReason.LENGTH


def test_aborting_every_request_leaves_the_engine_idle(tiny_model: PreTrainedModel,
                                                       tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine, out = start(tiny_model, tiny_tokenizer, max_num_seqs=2)
    engine.step()
    for rid in PLAN:
        engine.abort(rid)
    engine.step()

    assert not engine.has_work()
    assert (engine.stats.running, engine.stats.waiting, engine.stats.kv_slots) == (0, 0, 0)
    for rid in PLAN:
        assert len(out.finished_events(rid)) == 1
        assert out.finish(rid) is FinishReason.ABORT


def test_aborting_an_unknown_or_finished_request_changes_nothing(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    add(engine, out, "done", PROMPTS[0], greedy(2, ignore_eos=True))
    drain(engine)
    add(engine, out, "live", PROMPTS[0], greedy(5, ignore_eos=True))

    engine.abort("done")
    engine.abort("no-such-request")
    drain(engine)

    assert [e.finish_reason for e in out.finished_events("done")] == [FinishReason.LENGTH]
    assert out.finish("live") is FinishReason.LENGTH
    assert len(out.tokens("live")) == 5
