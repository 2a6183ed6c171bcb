"""Preparing requests off Triton's execute() thread and off the engine's step thread.

Chat templating and tokenization cost time in proportion to the prompt: a 1 MB prompt takes
about a second here. Done in execute() they held up every request behind it (Triton hands
one instance's requests to one execute() at a time), and done by the step loop they would
hold up every running stream. So execute() only parses tensors and hands work to a
`RequestIntake`, whose worker threads call the engine's public `add_requests` (which
tokenizes and queues) and `tokenize`:

- two lanes, each one thread: prompts up to `long_prompt_chars` characters in one, longer
  ones in the other, so a long prompt delays only other long prompts, never a short one;
- each lane takes everything waiting in it at once, so requests that arrived together are
  still queued on the engine together (and prefilled together);
- requests whose client is gone by then (`is_wanted` false) are dropped unprepared.

`prompt_chars` and `check_prompt_length` are the cheap pre-check execute() runs first: a
prompt with more characters than the context could hold at the tokenizer's longest token is
refused (ContextTooLong) without being tokenized at all.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ContextTooLong, EngineError
from .types import EventSink, GenerationRequest

logger = logging.getLogger(__name__)

LONG_PROMPT_CHARS = 16384
"""Prompts longer than this (in characters) are prepared in the long lane."""



class PreparingEngine(Protocol):
    """The part of `LLMEngine` the intake uses (its public API)."""

    def add_requests(self, items: list[tuple[GenerationRequest, EventSink]]) -> list[int | EngineError]: ...

    def tokenize(self, request: GenerationRequest) -> list[int]: ...


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the tokenizer's longest vocabulary entry: no token covers more text.

    For byte-level BPE a vocabulary entry has one character per byte, and a decoded character
    is at least one byte; SentencePiece's byte-fallback entries (`<0x0A>`) only overstate it.
    """
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary: no pre-check bound
        return 0
    return max((len(str(token)) for token in vocab), default=0)


def prompt_chars(request: GenerationRequest) -> int:
    """Characters of the prompt the caller sent (the chat template only adds to them)."""
    if request.messages is not None:
        return sum(len(str(m.get("content", ""))) for m in request.messages)
    return len(request.prompt or "")


def check_prompt_length(request: GenerationRequest, max_chars: int, context_tokens: int) -> int:
    """The prompt's character count; raises ContextTooLong when it cannot fit in
    `context_tokens` tokens even at `max_chars` (context x longest token) characters."""
    chars = prompt_chars(request)
    if max_chars > 0 and chars > max_chars:
        raise ContextTooLong(
            f"This model's maximum context length is {context_tokens} tokens, and the prompt of "
            f"{chars} characters is far longer than that (no {context_tokens} tokens span more than "
            f"{max_chars} characters). Please reduce the prompt.")
    return chars


@dataclass(frozen=True)
class IntakeJob:
    """One request for a lane: queue it on the engine, or only count its tokens."""

    request: GenerationRequest
    sink: EventSink
    chars: int
    count_only: bool = False


class RequestIntake:
    """Two worker lanes between execute() and the engine; see the module docstring.

    Callbacks run on a lane thread: `on_refused(request_id, error)` when the engine refused a
    request (or preparing it failed), `on_counted(request_id, tokens)` for a count-only job.
    """

    def __init__(self, engine: PreparingEngine, *, on_refused: Callable[[str, Exception], None],
                 on_counted: Callable[[str, int], None], is_wanted: Callable[[str], bool],
                 long_prompt_chars: int = LONG_PROMPT_CHARS) -> None:
        self._engine = engine
        self._on_refused = on_refused
        self._on_counted = on_counted
        self._is_wanted = is_wanted
        self._long = long_prompt_chars
        # execute() -> lane threads; None stops a lane.
        self._lanes = {name: queue.Queue[IntakeJob | None]() for name in ("short", "long")}
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"chatllm-intake-{name}", daemon=True)
                         for name, q in self._lanes.items()]
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: Iterable[IntakeJob]) -> None:
        """Hand jobs to their lanes (never blocks)."""
        for job in jobs:
            self._lanes["long" if job.chars > self._long else "short"].put(job)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the lanes after the jobs already submitted."""
        for lane in self._lanes.values():
            lane.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, lane: queue.Queue[IntakeJob | None]) -> None:
        while True:
            first = lane.get()
            jobs = [first]
            while jobs[-1] is not None:  # everything that is waiting, in one go
                try:
                    jobs.append(lane.get_nowait())
                except queue.Empty:
                    break
            stopping = jobs[-1] is None
            self._prepare([job for job in jobs if job is not None])
            if stopping:
                return

    def _prepare(self, jobs: list[IntakeJob]) -> None:
        wanted = [job for job in jobs if self._is_wanted(job.request.request_id)]
        for job in (j for j in wanted if j.count_only):
            try:
                count = 0 if job.request.prompt == "" else len(self._engine.tokenize(job.request))
            except Exception as exc:  # noqa: BLE001 - every request gets an answer
                self._on_refused(job.request.request_id, exc)
            else:
                self._on_counted(job.request.request_id, count)
        queued = [job for job in wanted if not job.count_only]
        if not queued:
            return
        try:
            results: list[int | EngineError] | None = self._engine.add_requests(
                [(job.request, job.sink) for job in queued])
        except Exception as exc:  # noqa: BLE001 - refuse these requests, keep the lane alive
            logger.exception("preparing %d requests failed", len(queued))
            for job in queued:
                self._on_refused(job.request.request_id, exc)
            return
        for job, result in zip(queued, results or ()):
            if isinstance(result, EngineError):
                self._on_refused(job.request.request_id, result)
