"""Fixtures: a `FakeLLMClient` and a `TestClient` on a gateway built around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeLLMClient


@pytest.fixture
def fake() -> FakeLLMClient:
    return FakeLLMClient()


@pytest.fixture
def make_client(fake: FakeLLMClient) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient with settings overrides, e.g. `make_client(api_keys=["k"])`."""
    opened: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        settings = GatewaySettings(triton_urls=["127.0.0.1:1"], **overrides)
        client = TestClient(create_app(settings, fake), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()

