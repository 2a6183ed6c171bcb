"""Model listing, health and app lifecycle."""

from __future__ import annotations

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.llm_client import ModelCard
from gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeLLMClient


def test_models_lists_every_served_name(client: TestClient) -> None:
    response = client.get("/v1/models")

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["root"], m["parent"]) for m in body["data"]] == [
        ("echo", "model", "echo", None),
        ("echo-alias", "model", "echo", "echo"),
        ("embedder", "model", "embedder", None),
    ]
    assert [(m["context_length"], m["max_model_len"]) for m in body["data"]] == [
        (256, 256),
        (256, 256),
        (128, 128),
    ]
    assert all(isinstance(m["created"], int) and m["owned_by"] for m in body["data"])


def test_models_say_which_engine_serves_them() -> None:
    fake = FakeLLMClient([ModelCard("t5", "t5", 512, engine="fallback"), ModelCard("plain", "plain", None)])
    with TestClient(create_app(GatewaySettings(), fake)) as client:
        body = client.get("/v1/models").json()
    assert body["data"][0]["engine"] == "fallback"
    assert "engine" not in body["data"][1]


def test_retrieve_one_model(client: TestClient) -> None:
    assert client.get("/v1/models/echo-alias").json()["id"] == "echo-alias"


def test_retrieve_model_with_a_slash_in_its_name() -> None:
    fake = FakeLLMClient([ModelCard("org/model", "org_model", None)])
    with TestClient(create_app(GatewaySettings(), fake)) as client:
        body = client.get("/v1/models/org/model").json()
    assert (body["id"], body["root"], body["context_length"]) == ("org/model", "org_model", None)


def test_retrieve_unknown_model_is_404(client: TestClient) -> None:
    response = client.get("/v1/models/nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_model_list_is_cached_between_requests(client: TestClient, fake: FakeLLMClient) -> None:
    for _ in range(3):
        assert client.get("/v1/models").status_code == 200
        body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
        assert client.post("/v1/chat/completions", json=body).status_code == 200

    assert fake.list_calls == 1


def test_health_follows_readiness(client: TestClient, fake: FakeLLMClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}

    fake.ready = False
    response = client.get("/health")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {
        "error": {
            "message": "Triton is not ready",
            "type": "service_unavailable_error",
            "param": None,
            "code": "service_unavailable",
        }
    }


def test_client_is_closed_on_shutdown() -> None:
    fake = FakeLLMClient()
    with TestClient(create_app(GatewaySettings(), fake)):
        assert not fake.closed
    assert fake.closed
