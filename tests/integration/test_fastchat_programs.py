"""FastChat 0.2.36's own programs, unmodified, against our gateway as their controller.

They run in a virtualenv of their own (fschat needs pydantic 1), made from the project's
files by `scripts/fastchat_venv.sh` on first use. The echo test model answers with the words
of the prompt it gets, so the answers show which prompt FastChat rendered and sent.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tritonchat.launch import free_port, terminate, wait_until_ready

from .servers import TritonProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VENV_SCRIPT = ROOT / "scripts" / "fastchat_venv.sh"
FASTCHAT_VENV = ROOT / ".venv-fastchat"
PROGRAM_TIMEOUT_S = 120.0
SERVER_READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def fastchat_python() -> Path:
    """The interpreter of the FastChat virtualenv (installed by the project's script)."""
    subprocess.run(["bash", str(VENV_SCRIPT), str(FASTCHAT_VENV)], check=True, cwd=ROOT,
                   timeout=1200)
    return FASTCHAT_VENV / "bin" / "python"


@pytest.fixture(scope="module")
def gateway(echo_triton: TritonProcess) -> Iterator[str]:
    from .servers import launch_gateway

    with launch_gateway([echo_triton.grpc_url]) as base_url:
        yield base_url


def fastchat_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["LOGDIR"] = tempfile.mkdtemp(prefix="fastchat-logs-")  # FastChat writes log files there
    return env


def test_test_message_streams_an_answer(fastchat_python: Path, gateway: str) -> None:
    result = subprocess.run(
        [str(fastchat_python), "-m", "fastchat.serve.test_message", "--controller-address",
         gateway, "--model-name", "echo", "--message", "hello from fastchat",
         "--max-new-tokens", "400"],
        capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_S, env=fastchat_env(),
        cwd=tempfile.gettempdir(),
    )

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "Models: ['echo', 'echo-alias']" in lines, result.stdout
    assert f"worker_addr: {gateway}" in lines
    assert "Human: hello from fastchat" in lines
    # The echo model repeats the prompt FastChat built from its `one_shot` template, streamed
    # until the template's stop string "###" (FastChat's own stop handling reached Triton).
    assert lines[-1] == (
        "Assistant: A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ), result.stdout


@contextlib.contextmanager
def openai_api_server(python: Path, controller: str) -> Iterator[str]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="fastchat-openai-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(python), "-m", "fastchat.serve.openai_api_server", "--controller-address",
             controller, "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env=fastchat_env(),
            cwd=tempfile.gettempdir(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base}/v1/models", process, "FastChat openai_api_server",
                         SERVER_READY_TIMEOUT_S, log)
        yield base
    finally:
        terminate(process)


def test_openai_api_server_over_our_controller(fastchat_python: Path, gateway: str) -> None:
    with openai_api_server(fastchat_python, gateway) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="none")

        assert sorted(m.id for m in client.models.list().data) == ["echo", "echo-alias"]

        stream = client.chat.completions.create(
            model="echo", stream=True, max_tokens=50,
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "What is up?"}])
        pieces, reasons = [], []
        for chunk in stream:
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
        # The prompt FastChat rendered with our ChatML template, echoed word by word up to
        # its first `<|im_end|>` (the template's stop string).
        assert "".join(pieces) == "<|im_start|>system Be brief."
        assert len([p for p in pieces if p]) > 1  # streamed, not one piece
        assert reasons[-1] == "stop"

        completion = client.completions.create(model="echo-alias", prompt="one two three",
                                               max_tokens=2)
        assert completion.choices[0].text.strip() == "one two"
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.prompt_tokens == 3

        unknown = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={
            "model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert unknown.status_code == 400 and unknown.json()["code"] == 40301


def test_our_chat_takes_test_messages_flags(gateway: str) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tritonchat.cli", "chat", "--controller-address", gateway,
         "--model-name", "echo-alias", "--message", "hello there friend", "--max-new-tokens", "2",
         "--temperature", "0"],
        capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_S)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "Models: ['echo', 'echo-alias']", "USER: hello there friend", "ASSISTANT: hello there"]
