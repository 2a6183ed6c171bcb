"""A client that goes away cancels its generations (streaming or not).

These drive the ASGI app directly, because the test client cannot disconnect: `receive`
hands over the body, then reports `http.disconnect` once the fake generation hangs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import HANG, FakeLLMClient, chunk

TIMEOUT_S = 5.0


async def post_then_disconnect(
    fake: FakeLLMClient, path: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """POST `body`, disconnect as soon as a generation hangs; returns the messages sent."""
    app = create_app(GatewaySettings(), fake)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9000),
    }
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await fake.wait_hanging()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), TIMEOUT_S)
    return sent


def chat(stream: bool, n: int = 1) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": "echo", "messages": messages, "stream": stream, "n": n}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("n", [1, 3])
def test_disconnect_while_streaming_cancels_every_generation(n: int) -> None:
    fake = FakeLLMClient()
    fake.queue(*[[chunk(f"c{i} ", prompt_tokens=1), HANG] for i in range(n)])

    sent = asyncio.run(post_then_disconnect(fake, "/v1/chat/completions", chat(stream=True, n=n)))

    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert fake.closed_early == n
    assert fake.completed == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("n", [1, 2])
def test_disconnect_while_waiting_for_a_full_answer_cancels_generation(n: int) -> None:
    fake = FakeLLMClient()
    fake.queue(*[[chunk("partial ", prompt_tokens=1), HANG] for _ in range(n)])

    sent = asyncio.run(post_then_disconnect(fake, "/v1/chat/completions", chat(stream=False, n=n)))

    assert fake.closed_early == n
    assert sent[0]["status"] == 499  # nobody reads it; logged as a client disconnect


@pytest.mark.timeout(20)
def test_disconnect_before_the_first_token_cancels_a_stream() -> None:
    fake = FakeLLMClient()
    fake.queue([HANG])

    body = {"model": "echo", "prompt": "p", "stream": True}
    asyncio.run(post_then_disconnect(fake, "/v1/completions", body))

    assert fake.closed_early == 1
