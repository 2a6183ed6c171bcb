"""Request bodies over the limit get 413 in OpenAI's shape before anything is parsed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from fastapi.testclient import TestClient

from tests.unit.gateway.fakes import FakeLLMClient
from tests.unit.gateway.test_gateway_errors import CHAT, assert_openai_error, chat_body

LIMIT = 4096


def big_body(size: int) -> bytes:
    body = chat_body(messages=[{"role": "user", "content": "x" * size}])
    return json.dumps(body).encode()


def test_a_body_over_the_limit_is_413_and_reaches_no_model(
    make_client: Callable[..., TestClient], fake: FakeLLMClient
) -> None:
    client = make_client(max_request_body_bytes=LIMIT)
    response = client.post(CHAT, content=big_body(LIMIT), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    error = assert_openai_error(response.json())
    assert error["code"] == "request_too_large" and str(LIMIT) in str(error["message"])
    assert fake.inputs == []


def test_a_chunked_body_over_the_limit_is_413(
    make_client: Callable[..., TestClient], fake: FakeLLMClient
) -> None:
    client = make_client(max_request_body_bytes=LIMIT)
    payload = big_body(LIMIT)

    def pieces() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    response = client.post(CHAT, content=pieces(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert_openai_error(response.json())
    assert fake.inputs == []


def test_a_body_under_the_limit_is_served(
    make_client: Callable[..., TestClient], fake: FakeLLMClient
) -> None:
    client = make_client(max_request_body_bytes=LIMIT)
    response = client.post(CHAT, content=big_body(LIMIT // 2), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert len(fake.inputs) == 1
