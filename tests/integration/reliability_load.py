"""Closed-loop clients for the reliability tests: each sends one chat request after another
(streaming or not) and records exactly what it got, so a test can count losses."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx

MAX_REQUESTS = 2000
"""Bound on one load, whatever happens."""


@dataclass
class Outcome:
    """One request as its client saw it."""

    stream: bool
    started: float
    ended: float
    status: int
    text: str
    expected: str
    errors: list[dict[str, object]] = field(default_factory=list)
    """Error events of a stream (after its 200)."""
    done_last: bool = False
    """A stream's last event was `[DONE]`."""
    finish_reason: str | None = None

    @property
    def complete(self) -> bool:
        """The whole answer arrived, with no error."""
        return (self.status == 200 and self.text == self.expected and not self.errors
                and self.finish_reason is not None and (self.done_last or not self.stream))


@dataclass
class ClosedLoop:
    """`clients` threads, half of them streaming, each sending `words` SLOW echo words per
    request (the echo model sends one word per 50 ms) until stopped."""

    gateway: str
    clients: int = 8
    words: int = 10
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # guards outcomes
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i % 2 == 1, i), name=f"client-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, stream: bool, client_id: int) -> None:
        with httpx.Client(base_url=self.gateway, timeout=60) as client:
            n = 0
            while not self._stop.is_set() and self.count() < MAX_REQUESTS:
                n += 1
                words = ["SLOW", *(f"c{client_id}r{n}w{i}" for i in range(self.words))]
                outcome = self._one(client, words, stream)
                with self._lock:
                    self.outcomes.append(outcome)

    def _one(self, client: httpx.Client, words: list[str], stream: bool) -> Outcome:
        body = {"model": "echo", "stream": stream, "messages": [{"role": "user", "content": " ".join(words)}]}
        outcome = Outcome(stream, time.monotonic(), 0.0, 0, "", " ".join(words))
        try:
            if not stream:
                response = client.post("/v1/chat/completions", json=body)
                outcome.status = response.status_code
                if response.status_code == 200:
                    choice = response.json()["choices"][0]
                    outcome.text, outcome.finish_reason = choice["message"]["content"], choice["finish_reason"]
                else:
                    outcome.text = response.text
            else:
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    outcome.status = response.status_code
                    parts: list[str] = []
                    for line in response.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line.removeprefix("data: ")
                        outcome.done_last = data == "[DONE]"
                        if outcome.done_last:
                            continue
                        event = json.loads(data)
                        if "error" in event:
                            outcome.errors.append(event["error"])
                            continue
                        for choice in event.get("choices", []):
                            parts.append(choice.get("delta", {}).get("content") or "")
                            outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
                    outcome.text = "".join(parts)
        except httpx.HTTPError as exc:
            outcome.text = repr(exc)
        outcome.ended = time.monotonic()
        return outcome

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def finished_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.started > moment)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a client hung"
        with self._lock:
            return list(self.outcomes)


def describe(outcomes: list[Outcome]) -> str:
    return "\n".join(f"stream={o.stream} status={o.status} errors={o.errors} done_last={o.done_last} "
                     f"text={o.text[:120]!r}" for o in outcomes[:10])
