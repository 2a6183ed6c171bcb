"""A scripted `LLMClient` for driving the gateway without Triton."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.llm_client import (
    EmbeddingResult,
    GenerationChunk,
    GenerationInput,
    ModelCard,
    TokenLogprob,
    TopLogprob,
)

WAIT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Signal:
    """Script step: set the named event (for ordering steps across concurrent streams)."""

    name: str


@dataclass(frozen=True)
class Wait:
    """Script step: wait until the named event is set."""

    name: str


class Hang:
    """Script step: block until the generation is cancelled or closed."""


HANG = Hang()

Step = GenerationChunk | Exception | Signal | Wait | Hang


def chunk(
    text: str,
    finish: str | None = None,
    prompt_tokens: int | None = None,
    tokens: int = 1,
    logprobs: tuple[TokenLogprob, ...] = (),
) -> GenerationChunk:
    return GenerationChunk(text, finish, prompt_tokens, tokens, logprobs)


def token_logprob(token: str, logprob: float, alternatives: int = 3) -> TokenLogprob:
    """The sampled token first (rank 1), then `alternatives - 1` made-up runners-up."""
    top = (TopLogprob(token, logprob),) + tuple(
        TopLogprob(f"alt{j}", logprob - j) for j in range(1, alternatives)
    )
    return TokenLogprob(token, logprob, top)


def fake_vector(text: str, size: int = 4) -> list[float]:
    """A deterministic stand-in embedding of `text`."""
    return [float(len(text) + j) / 8 for j in range(size)]


def words_script(text: str, prompt_tokens: int = 3) -> list[Step]:
    """One chunk per word, the last one with finish_reason "stop"."""
    words = text.split()
    steps: list[Step] = []
    for i, word in enumerate(words):
        last = i == len(words) - 1
        text = word + ("" if last else " ")
        steps.append(chunk(text, "stop" if last else None, prompt_tokens if i == 0 else None))
    return steps


class FakeLLMClient:
    """Satisfies `LLMClient`: replays queued scripts, records inputs and early closes.

    Each `generate` call takes the next queued script (call order = choice order), or
    echoes "fake answer" when none is queued. A generation closed or cancelled before its
    script ended counts in `closed_early` and sets `closed_early_event` (thread-safe, as
    `TestClient` runs the app on another thread).
    """

    def __init__(self, models: Iterable[ModelCard] | None = None) -> None:
        self.models = list(
            models
            if models is not None
            else [
                ModelCard("echo", "echo", 256),
                ModelCard("echo-alias", "echo", 256),
                ModelCard("embedder", "embedder", 128, "embed"),
            ]
        )
        self.ready = True
        self.list_error: Exception | None = None
        self.list_calls = 0
        self.inputs: list[GenerationInput] = []
        self.scripts: deque[list[Step]] = deque()
        self.closed_early = 0
        self.closed_early_event = threading.Event()
        self.completed = 0
        self.closed = False
        self.counted: list[tuple[str, str]] = []
        self.embedded: list[tuple[str, list[str]]] = []
        self.embed_error: Exception | None = None
        self._events: dict[str, asyncio.Event] = {}

    def queue(self, *scripts: list[Step]) -> None:
        self.scripts.extend(scripts)

    def _event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def list_models(self) -> list[ModelCard]:
        self.list_calls += 1
        if self.list_error is not None:
            raise self.list_error
        return list(self.models)

    async def generate(self, inp: GenerationInput) -> AsyncIterator[GenerationChunk]:
        self.inputs.append(inp)
        script = self.scripts.popleft() if self.scripts else words_script("fake answer")
        finished = False
        try:
            for step in script:
                if isinstance(step, GenerationChunk):
                    yield step
                elif isinstance(step, Exception):
                    finished = True
                    raise step
                elif isinstance(step, Signal):
                    self._event(step.name).set()
                elif isinstance(step, Wait):
                    # Bounded, so a test whose ordering cannot happen fails instead of hanging.
                    await asyncio.wait_for(self._event(step.name).wait(), WAIT_TIMEOUT_S)
                else:
                    self._event("hanging").set()
                    await asyncio.Event().wait()
            finished = True
            self.completed += 1
        finally:
            if not finished:
                self.closed_early += 1
                self.closed_early_event.set()

    async def count_tokens(self, model: str, prompt: str, request_id: str = "") -> int:
        """One token per word."""
        self.counted.append((model, prompt))
        return len(prompt.split())

    async def embed(
        self, model: str, texts: Sequence[str], request_id: str = ""
    ) -> EmbeddingResult:
        """`fake_vector` of each text; one token per word."""
        self.embedded.append((model, list(texts)))
        if self.embed_error is not None:
            raise self.embed_error
        return EmbeddingResult(
            vectors=[fake_vector(t) for t in texts],
            prompt_tokens=sum(len(t.split()) for t in texts),
        )

    async def wait_hanging(self) -> None:
        """For tests on the app's own loop: returns once some generation hangs."""
        await self._event("hanging").wait()

    async def is_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        self.closed = True


def sse_events(body: str) -> list[Any]:
    """Parse an SSE body into JSON payloads, keeping "[DONE]" as the string."""
    assert body.endswith("\n\n"), body[-200:]
    events: list[Any] = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events
