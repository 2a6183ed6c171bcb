"""A request that got its final response is never touched again (the SIGSEGV of a burst)."""

from __future__ import annotations

import threading
from typing import Any


class RecordingSender:
    """Fails the test the moment it is used after its final response, as Triton would crash."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []
        self.final = False
        self.used_after_final = 0

    def send(self, response: Any, flags: int = 0) -> None:
        if self.final:
            self.used_after_final += 1
        self.sent.append((response, flags))
        self.final = self.final or bool(flags)

    def is_cancelled(self) -> bool:
        if self.final:
            self.used_after_final += 1
        return True


def test_after_finish_the_sender_is_never_used(backend_model: Any) -> None:
    sender = RecordingSender()
    channel = backend_model.ResponseChannel(sender)
    assert channel.send("first") is True
    assert channel.finish("last") is True
    assert channel.finish("again") is False
    assert channel.send("late") is False
    assert channel.is_cancelled() is False
    assert channel.finished
    assert sender.used_after_final == 0
    assert [flags for _, flags in sender.sent] == [0, 1]


def test_a_cancellation_sweep_racing_a_rejection_never_touches_a_finished_sender(backend_model: Any) -> None:
    """The crash: one thread sends the FINAL rejection while another asks is_cancelled()."""
    for _ in range(200):
        sender = RecordingSender()
        channel = backend_model.ResponseChannel(sender)
        start = threading.Barrier(3)

        def reject() -> None:
            start.wait()
            channel.finish("rejected")

        def sweep() -> None:
            start.wait()
            for _ in range(50):
                if channel.is_cancelled():
                    channel.finish("cancelled")

        threads = [threading.Thread(target=reject), threading.Thread(target=sweep)]
        for thread in threads:
            thread.start()
        start.wait()
        for thread in threads:
            thread.join()
        assert sender.used_after_final == 0
        assert sum(1 for _, flags in sender.sent if flags) == 1
