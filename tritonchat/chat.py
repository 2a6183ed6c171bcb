"""`tritonchat chat`: FastChat's `test_message` (one message) and `fastchat.serve.cli` (an
interactive chat with history), over the gateway's OpenAI API.

Like `test_message` it prints `Models: [...]` first, then the question and the streamed
answer. Without `--message` it reads questions from the terminal; `!!reset` starts a new
conversation and `!!exit` (or an empty line, or end of input) leaves, as in FastChat's CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

USER, ASSISTANT = "USER", "ASSISTANT"
EXIT_COMMANDS = ("", "!!exit")
RESET_COMMAND = "!!reset"


class ChatBackend(Protocol):
    """What the chat needs from the server (the OpenAI client, or a fake in tests)."""

    def models(self) -> list[str]: ...

    def stream(self, model: str, messages: list[dict[str, str]], temperature: float,
               max_tokens: int) -> Iterator[str]: ...


class OpenAIBackend:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        from openai import OpenAI

        self._client = OpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key or "none")

    def models(self) -> list[str]:
        return [m.id for m in self._client.models.list().data]

    def stream(self, model: str, messages: list[dict[str, str]], temperature: float,
               max_tokens: int) -> Iterator[str]:
        stream: Any = self._client.chat.completions.create(
            model=model, messages=messages, stream=True,  # type: ignore[arg-type]
            temperature=temperature, max_tokens=max_tokens)
        try:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
        finally:
            stream.close()  # leaving early cancels the generation on the server


@dataclass(frozen=True)
class ChatOptions:
    model: str | None
    message: str | None
    temperature: float = 0.0
    max_tokens: int = 256


def run_chat(backend: ChatBackend, options: ChatOptions, stdin: TextIO, stdout: TextIO) -> int:
    """Print the models, then answer one message or chat until the user leaves."""
    models = sorted(backend.models())
    print(f"Models: {models}", file=stdout, flush=True)
    model = options.model or (models[0] if models else None)
    if model is None:
        raise RuntimeError("the server serves no model")
    history: list[dict[str, str]] = []
    if options.message is not None:
        print(f"{USER}: {options.message}", file=stdout)
        _answer(backend, model, options, history, options.message, stdout)
        return 0
    while True:
        print(f"{USER}: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        question = line.strip()
        if not line or question in EXIT_COMMANDS:
            print("exit...", file=stdout)
            return 0
        if question == RESET_COMMAND:
            history.clear()
            print("resetting...", file=stdout)
            continue
        _answer(backend, model, options, history, question, stdout)


def _answer(backend: ChatBackend, model: str, options: ChatOptions,
            history: list[dict[str, str]], question: str, stdout: TextIO) -> None:
    history.append({"role": "user", "content": question})
    print(f"{ASSISTANT}: ", end="", file=stdout, flush=True)
    pieces: list[str] = []
    try:
        for piece in backend.stream(model, list(history), options.temperature, options.max_tokens):
            pieces.append(piece)
            print(piece, end="", file=stdout, flush=True)
    except KeyboardInterrupt:  # Ctrl-C stops this answer (and its generation), not the chat
        pass
    print(file=stdout, flush=True)
    history.append({"role": "assistant", "content": "".join(pieces)})
