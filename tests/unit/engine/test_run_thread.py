"""run() on its own thread: requests complete through it; stop() ends it and fails what is left."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import chatllm_engine.engine as engine_module
from chatllm_engine.engine import LLMEngine
from chatllm_engine.errors import EngineDead, EngineError
from chatllm_engine.types import FinishReason, TokenEvent

from .support import PROMPTS, Collector, add, drain, greedy, make_engine

WAIT_S = 30.0  # upper bound only: every wait returns as soon as its condition holds


class WaitableCollector(Collector):
    """A Collector whose tests can block until a condition on the events holds."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def sink(self, request_id: str) -> Callable[[TokenEvent | EngineError], None]:
        inner = super().sink(request_id)

        def receive(event: TokenEvent | EngineError) -> None:
            with self._changed:
                inner(event)
                self._changed.notify_all()
        return receive

    def wait_for(self, condition: Callable[[], bool]) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, timeout=WAIT_S), "timed out waiting for engine events"

    def done(self, request_id: str) -> bool:
        return bool(self.finished_events(request_id) or self.errors[request_id])


@pytest.fixture
def running_engine(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase,
                   request: pytest.FixtureRequest) -> Iterator[tuple[LLMEngine, threading.Thread]]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    engine = make_engine(tiny_model, tiny_tokenizer, **overrides)
    thread = threading.Thread(target=engine.run, name="test-engine", daemon=True)
    thread.start()
    yield engine, thread
    engine.stop()
    thread.join(timeout=WAIT_S)
    assert not thread.is_alive(), "the engine thread did not stop"


def test_requests_complete_through_the_engine_thread(
        running_engine: tuple[LLMEngine, threading.Thread], tiny_model: PreTrainedModel,
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine, _ = running_engine
    out = WaitableCollector()
    plan = {f"r{i}": (PROMPTS[i], 10 + i) for i in range(4)}

    for rid, (prompt, max_tokens) in plan.items():
        add(engine, out, rid, prompt, greedy(max_tokens))
    out.wait_for(lambda: all(out.done(rid) for rid in plan))

    synchronous = make_engine(tiny_model, tiny_tokenizer)
    expected = Collector()
    for rid, (prompt, max_tokens) in plan.items():
        add(synchronous, expected, rid, prompt, greedy(max_tokens))
    drain(synchronous)
    for rid in plan:
        assert not out.errors[rid]
        assert out.tokens(rid) == expected.tokens(rid)
        assert out.text(rid) == expected.text(rid)


def test_abort_through_the_engine_thread(running_engine: tuple[LLMEngine, threading.Thread]) -> None:
    engine, _ = running_engine
    out = WaitableCollector()
    add(engine, out, "long", PROMPTS[0], greedy(400, ignore_eos=True))
    out.wait_for(lambda: bool(out.events["long"]))

    engine.abort("long")
    out.wait_for(lambda: out.done("long"))

    assert out.finish("long") is FinishReason.ABORT
    assert len(out.tokens("long")) < 400
    events_of_long = len(out.events["long"])
    add(engine, out, "next", PROMPTS[1], greedy(5, ignore_eos=True))
    out.wait_for(lambda: out.done("next"))
    assert len(out.events["long"]) == events_of_long, "events after the abort"
    assert out.finish("next") is FinishReason.LENGTH


@pytest.mark.parametrize("running_engine", [{"max_num_seqs": 1}], indirect=True)
def test_stop_fails_in_flight_requests_and_refuses_new_ones(
        running_engine: tuple[LLMEngine, threading.Thread]) -> None:
    engine, thread = running_engine
    out = WaitableCollector()
    add(engine, out, "running", PROMPTS[0], greedy(400, ignore_eos=True))
    add(engine, out, "queued", PROMPTS[1], greedy(400, ignore_eos=True))
    out.wait_for(lambda: bool(out.events["running"]))

    engine.stop()
    thread.join(timeout=WAIT_S)

    assert not thread.is_alive()
    for rid in ("running", "queued"):
        assert len(out.errors[rid]) == 1
        assert isinstance(out.errors[rid][0], EngineDead)
        assert not out.finished_events(rid)
    with pytest.raises(EngineDead):
        add(engine, out, "late", PROMPTS[2], greedy(5))
    assert not out.events["late"] and not out.errors["late"]


def test_stop_of_an_idle_engine_ends_the_thread(running_engine: tuple[LLMEngine, threading.Thread]) -> None:
    engine, thread = running_engine

    engine.stop()
    thread.join(timeout=WAIT_S)

    assert not thread.is_alive()
    with pytest.raises(EngineDead):
        add(engine, Collector(), "late", PROMPTS[0], greedy(5))


@pytest.fixture
def first_forward_fails(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The engine's next forward step raises (as a CUDA OOM would); later ones run. The event
    is set once it has failed."""
    failed = threading.Event()
    real = engine_module.forward_step

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "forward_step", failing_once)
    return failed


def test_a_failing_decode_step_fails_the_batch_and_the_engine_keeps_serving(
        running_engine: tuple[LLMEngine, threading.Thread], first_forward_fails: threading.Event) -> None:
    engine, _ = running_engine
    failed = first_forward_fails
    out = WaitableCollector()

    add(engine, out, "victim", PROMPTS[0], greedy(50, ignore_eos=True))
    out.wait_for(lambda: out.done("victim"))

    assert failed.is_set()
    assert len(out.errors["victim"]) == 1
    assert isinstance(out.errors["victim"][0], EngineDead)
    assert "CUDA out of memory" in str(out.errors["victim"][0])
    add(engine, out, "after", PROMPTS[0], greedy(5, ignore_eos=True))
    out.wait_for(lambda: out.done("after"))
    assert out.finish("after") is FinishReason.LENGTH
    assert len(out.tokens("after")) == 5


def test_a_failing_prefill_fails_the_requests_being_admitted(
        running_engine: tuple[LLMEngine, threading.Thread], first_forward_fails: threading.Event) -> None:
    engine, thread = running_engine
    failed = first_forward_fails
    out = WaitableCollector()

    add(engine, out, "admitted", PROMPTS[0], greedy(5))
    assert failed.wait(WAIT_S)
    # Whatever the engine does after the failure, stopping it must leave no request unanswered.
    engine.stop()
    thread.join(timeout=WAIT_S)

    assert out.done("admitted"), "the request never got a final event: its client would hang"
