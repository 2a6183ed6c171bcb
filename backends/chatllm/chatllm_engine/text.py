"""Incremental detokenisation with stop strings.

Decoding token by token breaks multi-byte characters (one Chinese character may span
several byte-level tokens) and word-joining rules, so each step decodes a short window of
recent tokens and emits only what that window adds. Text that could be the beginning of a
stop string is held back until it is clear, so no part of a stop string ever leaks out.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas (one per `add_token` call)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-6:])  # context so the first token decodes with its leading space
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def add_token(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """At the end: what the held-back tokens decode to, less the bytes of a character the
        generation stopped in the middle of (they would decode to a trailing "\ufffd")."""
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix):].rstrip(REPLACEMENT_CHAR) if full.startswith(prefix) else ""


class StopStringMatcher:
    """Accumulates text, cuts it at the first stop string, and holds back possible prefixes."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add a delta; return the text now safe to send."""
        if self.stopped:
            return ""
        search_from = max(0, self._emitted - max((len(s) for s in self._stops), default=0))
        self._text += delta
        cut = min(
            (i for i in (self._text.find(s, search_from) for s in self._stops) if i >= 0),
            default=-1,
        )
        if cut >= 0:
            self.stopped = True
            return self._release(cut)
        return self._release(len(self._text) - self._held_back())

    def flush(self) -> str:
        """Send whatever was held back (the generation ended without a stop string)."""
        return "" if self.stopped else self._release(len(self._text))

    def _held_back(self) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self._emitted)
        out = self._text[self._emitted:end]
        self._emitted = end
        return out
