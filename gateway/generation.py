"""Running the generations behind one HTTP request, independent of HTTP.

One request with `n` choices (and, for completions, several prompts) becomes several
`LLMClient.generate` streams. `stream_choice` turns one of them into `ChoiceDelta`s (with
stop strings cut out); `merge` runs them concurrently and interleaves their deltas as
they arrive. Closing the merged iterator cancels every generation still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from gateway.errors import UpstreamError
from gateway.llm_client import GenerationInput, LLMClient, TokenLogprob

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CLEANUP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ChoiceDelta:
    """New text for one choice; `finish_reason` is set on the choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    """The tokens behind this delta, when logprobs were asked for (text held back while it
    may be the start of a stop string comes later, so the two can be a chunk apart)."""


@dataclass
class UsageCounter:
    """Token counts of one HTTP request, filled in while its generations run.

    Prompt tokens count once per distinct prompt (`group`), not once per choice.
    """

    _prompt_by_group: dict[int, int] = field(default_factory=dict)
    completion_tokens: int = 0

    def record_prompt(self, group: int, tokens: int) -> None:
        self._prompt_by_group.setdefault(group, tokens)

    @property
    def prompt_tokens(self) -> int:
        return sum(self._prompt_by_group.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StopStringFilter:
    """Cuts streamed text at the first stop string, whatever chunks it spans.

    Text that might be the start of a stop string is held back until it is known not to
    be; `flush` releases it when the generation ends without the stop string completing.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns the text safe to emit and whether a stop string was reached."""
        if not self._stops:
            return text, False
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        hold = self._longest_stop_prefix_suffix(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best


async def _aclose(iterator: AsyncIterator[object]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def stream_choice(
    client: LLMClient,
    index: int,
    inp: GenerationInput,
    usage: UsageCounter,
    prompt_group: int = 0,
) -> AsyncGenerator[ChoiceDelta, None]:
    """One choice's deltas; the last carries the finish reason.

    Reaching a stop string ends the choice with "stop" and closes the upstream stream,
    which cancels the rest of that generation.
    """
    stops = StopStringFilter(inp.sampling.stop)
    chunks = client.generate(inp)
    try:
        async for chunk in chunks:
            if chunk.num_input_tokens is not None:
                usage.record_prompt(prompt_group, chunk.num_input_tokens)
            usage.completion_tokens += chunk.num_output_tokens
            text, stopped = stops.feed(chunk.text)
            if stopped:
                yield ChoiceDelta(index, text, "stop", chunk.logprobs)
                return
            if chunk.finish_reason is not None:
                yield ChoiceDelta(index, text + stops.flush(), chunk.finish_reason, chunk.logprobs)
                return
            if text or chunk.logprobs:
                yield ChoiceDelta(index, text, None, chunk.logprobs)
    finally:
        await _aclose(chunks)
    raise UpstreamError(500, "the generation ended without a finish reason", "server_error")


@dataclass(frozen=True)
class _Failed:
    exc: Exception


class _Finished:
    pass


_FINISHED = _Finished()


class _Pump(Generic[T]):
    """Copies one stream into the shared queue (one task per stream)."""

    def __init__(
        self, stream: AsyncIterator[T], queue: asyncio.Queue[T | _Failed | _Finished]
    ) -> None:
        self._stream = stream
        self._queue = queue

    async def run(self) -> None:
        try:
            async for item in self._stream:
                self._queue.put_nowait(item)
            self._queue.put_nowait(_FINISHED)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._queue.put_nowait(_Failed(exc))
        finally:
            await _aclose(self._stream)


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncGenerator[T, None]:
    """Items of all streams in arrival order; the first failure is re-raised.

    When the consumer stops early (error, disconnect, `aclose`), every stream still
    running is cancelled and closed before this generator finishes.
    """
    queue: asyncio.Queue[T | _Failed | _Finished] = asyncio.Queue()
    tasks = [asyncio.create_task(_Pump(s, queue).run()) for s in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if isinstance(item, _Finished):
                running -= 1
            elif isinstance(item, _Failed):
                raise item.exc
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        # Shielded: under Starlette the enclosing scope may already be cancelled, and the
        # upstream streams must be closed (gRPC cancelled) before the response ends.
        with anyio.move_on_after(_CLEANUP_TIMEOUT_S, shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
