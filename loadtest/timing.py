"""What one streamed generation measured, and how a run's requests are summarised.

Pure functions and dataclasses (no Locust import), shared by the Locust users, the
experiment runner and the unit tests.

Definitions (the same for the gateway's SSE stream and Triton's gRPC stream):
- TTFT: from sending the request to the first response that carries generated text.
- ITL (inter-token latency): `(last token time - first token time) / (output tokens - 1)`,
  the mean gap between tokens of one request after the first (vLLM's "TPOT").
- tokens/s of a request: output tokens / (end - start), what one user sees end to end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamMeasurement:
    """Timestamps (`time.perf_counter()` seconds) and counts of one streamed generation."""

    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    """Arrival of each response that carried text (a response may carry several tokens)."""
    output_tokens: int = 0
    prompt_tokens: int | None = None
    received_bytes: int = 0
    finish_reason: str | None = None
    error: str | None = None

    @property
    def first_token(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def ttft_s(self) -> float | None:
        first = self.first_token
        return None if first is None else first - self.start

    @property
    def latency_s(self) -> float:
        return self.end - self.start

    @property
    def itl_s(self) -> float | None:
        tokens = max(self.output_tokens, len(self.token_times))
        if tokens < 2 or len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (tokens - 1)

    @property
    def tokens_per_s(self) -> float | None:
        if self.latency_s <= 0 or self.output_tokens <= 0:
            return None
        return self.output_tokens / self.latency_s

    @property
    def token_gaps_s(self) -> list[float]:
        """Each gap between two consecutive responses that carried text."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    def tokens_between(self, t0: float, t1: float) -> float:
        """Output tokens that arrived in [t0, t1) (responses' tokens spread evenly over them)."""
        if not self.token_times or self.output_tokens <= 0:
            return 0.0
        inside = sum(1 for t in self.token_times if t0 <= t < t1)
        return self.output_tokens * inside / len(self.token_times)


class StreamError(Exception):
    """The server reported an error inside a stream that had started."""


class SseDecoder:
    """Server-sent events, one line at a time: `feed` returns an event's `data:` payload when
    the blank line that ends the event arrives (comments and other fields skipped)."""

    def __init__(self) -> None:
        self._buffer: list[str] = []

    def feed(self, raw: bytes | str) -> str | None:
        line = (raw.decode("utf-8") if isinstance(raw, bytes) else raw).rstrip("\r\n")
        if not line:
            return self.flush()
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                self._buffer.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """The payload of an event the stream ended without a blank line after (else None)."""
        if not self._buffer:
            return None
        payload = "\n".join(self._buffer)
        self._buffer = []
        return payload


def sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream, one per event (comments skipped)."""
    decoder = SseDecoder()
    for raw in lines:
        payload = decoder.feed(raw)
        if payload is not None:
            yield payload
    payload = decoder.flush()
    if payload is not None:
        yield payload


def record_chat_event(measurement: StreamMeasurement, payload: str, now: float) -> bool:
    """Account one SSE payload of `/v1/chat/completions`; True once `[DONE]` arrived.

    Raises StreamError for an in-band error event.
    """
    if payload.strip() == "[DONE]":
        return True
    event: dict[str, Any] = json.loads(payload)
    if "error" in event:
        error = event["error"] or {}
        raise StreamError(str(error.get("message", error)) if isinstance(error, dict) else str(error))
    text = False
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content"):
            text = True
        if choice.get("finish_reason"):
            measurement.finish_reason = choice["finish_reason"]
    if text:
        measurement.token_times.append(now)
    usage = event.get("usage")
    if usage:
        measurement.output_tokens = int(usage.get("completion_tokens") or 0)
        measurement.prompt_tokens = usage.get("prompt_tokens")
    return False


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class RequestRecord:
    """One finished request as the runner stores it (times relative to the window start)."""

    via: str
    start_s: float
    ok: bool
    ttft_s: float | None
    itl_s: float | None
    latency_s: float
    output_tokens: int
    prompt_tokens: int | None
    tokens_in_window: float
    error: str = ""

    COLUMNS = ("via", "start_s", "ok", "ttft_s", "itl_s", "latency_s", "output_tokens", "prompt_tokens",
               "tokens_in_window", "error")

    def row(self) -> list[Any]:
        return [getattr(self, name) for name in self.COLUMNS]

    @classmethod
    def from_row(cls, row: dict[str, str]) -> RequestRecord:
        def opt(name: str) -> float | None:
            return float(row[name]) if row.get(name) not in (None, "", "None") else None

        prompt = opt("prompt_tokens")
        return cls(via=row["via"], start_s=float(row["start_s"]), ok=row["ok"] == "True", ttft_s=opt("ttft_s"),
                   itl_s=opt("itl_s"), latency_s=float(row["latency_s"]), output_tokens=int(row["output_tokens"]),
                   prompt_tokens=None if prompt is None else int(prompt),
                   tokens_in_window=float(row["tokens_in_window"]), error=row.get("error", ""))


def summarise(records: Sequence[RequestRecord], window_s: float) -> dict[str, Any]:
    """Client-side numbers of one measurement window.

    Latencies count the requests that started in the window (they were let finish);
    throughput counts the tokens that arrived in the window, whichever request they belong to.
    """
    started = [r for r in records if 0.0 <= r.start_s < window_s]
    ok = [r for r in started if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [r.itl_s for r in ok if r.itl_s is not None]
    latency = [r.latency_s for r in ok]
    tokens = sum(r.tokens_in_window for r in records)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 2)

    return {
        "requests": len(started),
        "failures": len(started) - len(ok),
        "output_tokens_in_window": round(tokens, 1),
        "output_tokens_per_s": round(tokens / window_s, 2) if window_s > 0 else None,
        "requests_per_s": round(len(ok) / window_s, 3) if window_s > 0 else None,
        "mean_output_tokens": round(sum(r.output_tokens for r in ok) / len(ok), 1) if ok else None,
        "ttft_p50_ms": ms(percentile(ttft, 50)),
        "ttft_p90_ms": ms(percentile(ttft, 90)),
        "ttft_p99_ms": ms(percentile(ttft, 99)),
        "itl_p50_ms": ms(percentile(itl, 50)),
        "itl_p99_ms": ms(percentile(itl, 99)),
        "latency_p50_ms": ms(percentile(latency, 50)),
        "latency_p99_ms": ms(percentile(latency, 99)),
    }
