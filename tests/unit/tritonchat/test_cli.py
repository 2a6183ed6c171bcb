"""The tritonchat CLI: argument wiring and failure exits (no servers started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonchat.cli import build_parser, main


def test_serve_defaults_bind_loopback_and_standard_ports() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.http_port, args.grpc_port, args.metrics_port) == (
        "127.0.0.1", 9000, 8000, 8001, 8002)


def test_serve_fails_with_reason_for_a_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--model-repository", str(tmp_path / "nope")])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_chat_reports_an_unreachable_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    from tritonchat.launch import free_port

    code = main(["chat", "--url", f"http://127.0.0.1:{free_port()}", "--model", "m", "--message", "hi"])
    assert code == 1
    assert "tritonchat chat" in capsys.readouterr().err
