"""`tritonchat chat`: test_message's output and flags, and the interactive chat's history."""

from __future__ import annotations

import io
from collections.abc import Iterator

from tritonchat.chat import ChatOptions, run_chat
from tritonchat.cli import build_parser


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []

    def models(self) -> list[str]:
        return ["m2", "m1"]

    def stream(self, model: str, messages: list[dict[str, str]], temperature: float,
               max_tokens: int) -> Iterator[str]:
        self.calls.append(messages)
        yield f"answer {len(self.calls)}"
        yield "!"


def test_test_message_flags_are_accepted() -> None:
    args = build_parser().parse_args([
        "chat", "--controller-address", "http://c:21001", "--model-name", "m",
        "--message", "hi", "--max-new-tokens", "32", "--temperature", "0.5"])
    assert (args.url, args.model, args.message, args.max_tokens, args.temperature) == (
        "http://c:21001", "m", "hi", 32, 0.5)


def test_one_message_prints_models_question_and_answer() -> None:
    out = io.StringIO()
    code = run_chat(FakeBackend(), ChatOptions("m1", "hello"), io.StringIO(), out)
    assert code == 0
    assert out.getvalue().splitlines() == ["Models: ['m1', 'm2']", "USER: hello", "ASSISTANT: answer 1!"]


def test_interactive_chat_keeps_history_until_reset() -> None:
    backend, out = FakeBackend(), io.StringIO()
    stdin = io.StringIO("first\nsecond\n!!reset\nthird\n!!exit\n")

    assert run_chat(backend, ChatOptions(None, None), stdin, out) == 0

    assert [len(c) for c in backend.calls] == [1, 3, 1]
    assert backend.calls[1] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer 1!"},
        {"role": "user", "content": "second"},
    ]
    assert "ASSISTANT: answer 2!" in out.getvalue() and "resetting..." in out.getvalue()
