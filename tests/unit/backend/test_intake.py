"""The intake: a long prompt delays only itself; a prompt far too long is never tokenized."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from chatllm_engine.errors import ContextTooLong, EngineError, EngineOverloaded
from chatllm_engine.intake import (
    IntakeJob,
    RequestIntake,
    check_prompt_length,
    longest_token_chars,
)
from chatllm_engine.types import GenerationRequest

DEADLINE_S = 10.0


class SlowEngine:
    """Tokenizes a prompt that starts with "long" only once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.queued: list[str] = []
        self.lock = threading.Lock()

    def tokenize(self, request: GenerationRequest) -> list[int]:
        if (request.prompt or "").startswith("long"):
            assert self.release.wait(DEADLINE_S)
        return [1] * len((request.prompt or "").split())

    def add_requests(self, items: list[tuple[GenerationRequest, Any]]) -> list[int | EngineError]:
        results: list[int | EngineError] = []
        for request, _ in items:
            if request.prompt == "full":
                results.append(EngineOverloaded("the engine is at capacity"))
                continue
            results.append(len(self.tokenize(request)))
            with self.lock:
                self.queued.append(request.request_id)
        return results


def job(request_id: str, prompt: str, count_only: bool = False) -> IntakeJob:
    return IntakeJob(GenerationRequest(request_id=request_id, prompt=prompt), lambda _: None, len(prompt),
                     count_only)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # polling interval


def test_a_short_request_is_queued_while_a_long_prompt_is_still_being_tokenized() -> None:
    engine = SlowEngine()
    refused: list[tuple[str, Exception]] = []
    counted: dict[str, int] = {}
    intake = RequestIntake(engine, on_refused=lambda r, e: refused.append((r, e)),
                           on_counted=counted.__setitem__, is_wanted=lambda _: True, long_prompt_chars=100)
    try:
        intake.submit([job("big", "long " * 100), job("small", "hello there")])
        wait_for(lambda: "small" in engine.queued, "the short request to be queued")
        assert "big" not in engine.queued, "the long prompt is still being tokenized"
        intake.submit([job("count", "three words here", count_only=True), job("refused", "full")])
        wait_for(lambda: "count" in counted and refused, "the count and the refusal")
        assert counted["count"] == 3
        assert [(r, type(e)) for r, e in refused] == [("refused", EngineOverloaded)]
        engine.release.set()
        wait_for(lambda: "big" in engine.queued, "the long prompt to be queued")
    finally:
        engine.release.set()
        intake.stop()


def test_requests_no_longer_wanted_are_dropped_unprepared() -> None:
    engine = SlowEngine()
    engine.release.set()
    intake = RequestIntake(engine, on_refused=lambda r, e: None, on_counted=lambda r, c: None,
                           is_wanted=lambda request_id: request_id != "gone")
    intake.submit([job("gone", "hello"), job("kept", "hello")])
    intake.stop()  # after the jobs already submitted
    assert engine.queued == ["kept"]


class Vocab:
    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "ĠĠĠĠ": 1, "hello": 2}


def test_a_prompt_longer_than_the_context_can_span_is_refused_before_tokenizing() -> None:
    longest = longest_token_chars(Vocab())
    assert longest == 5
    limit = 16 * longest  # a 16-token context
    fits = GenerationRequest(request_id="ok", prompt="x" * limit)
    assert check_prompt_length(fits, limit, 16) == limit
    chat = GenerationRequest(request_id="chat", messages=({"role": "user", "content": "x" * (limit + 1)},))
    with pytest.raises(ContextTooLong, match="maximum context length is 16 tokens"):
        check_prompt_length(chat, limit, 16)
