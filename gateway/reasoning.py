"""`reasoning_content`: the `<think>...</think>` part of an answer, split from its content.

Used for models whose config sets `reasoning_parser: think`: an answer that opens with
`<think>` has its reasoning up to `</think>` (or to its end); any other answer is content.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """A whole answer -> (reasoning or None, content)."""
    body = text.lstrip()
    if not body.startswith(OPEN):
        return None, text
    reasoning, _, content = body[len(OPEN):].lstrip().partition(CLOSE)
    return reasoning, content.lstrip()


def _partial(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class ReasoningStream:
    """One choice's streamed text -> (reasoning delta, content delta) pairs.

    Until the first non-blank text shows whether the answer opens with `<think>`, text is
    held; inside the section, a possible start of `</think>` is held until it is clear.
    """

    def __init__(self) -> None:
        self._state = "start"  # start -> thinking -> content
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        if self._state == "content":
            return "", text
        self._held += text
        if self._state == "start":
            stripped = self._held.lstrip()
            if not stripped or (OPEN.startswith(stripped) and stripped != OPEN):
                return "", ""
            if stripped.startswith(OPEN):
                self._state, self._held = "thinking", stripped[len(OPEN):].lstrip()
            else:
                self._state = "content"
                held, self._held = self._held, ""
                return "", held
        end = self._held.find(CLOSE)
        if end >= 0:
            reasoning, content = self._held[:end], self._held[end + len(CLOSE):].lstrip()
            self._state, self._held = "content", ""
            return reasoning, content
        keep = _partial(self._held, CLOSE)
        out, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
        return out, ""

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, ""
        return "", held
