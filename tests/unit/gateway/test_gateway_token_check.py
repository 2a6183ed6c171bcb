"""FastChat's `/api/v1/token_check` with a fake client (one token per word)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.llm_client import ModelCard
from gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeLLMClient

TOKEN_CHECK = "/api/v1/token_check"


def test_counts_and_fits_in_fastchat_shape(client: TestClient, fake: FakeLLMClient) -> None:
    body = {
        "prompts": [
            {"model": "echo", "prompt": "one two three", "max_tokens": 253},
            {"model": "echo-alias", "prompt": "one two three", "max_tokens": 254},
        ]
    }

    response = client.post(TOKEN_CHECK, json=body)

    assert response.status_code == 200
    assert response.json() == {
        "prompts": [
            {"fits": True, "tokenCount": 3, "contextLength": 256},
            {"fits": False, "tokenCount": 3, "contextLength": 256},
        ]
    }
    assert fake.counted == [("echo", "one two three"), ("echo", "one two three")]
    assert fake.inputs == []  # nothing was generated


def test_unknown_context_length_always_fits() -> None:
    fake = FakeLLMClient([ModelCard("m", "m", None)])
    with TestClient(create_app(GatewaySettings(), fake)) as client:
        body = {"prompts": [{"model": "m", "prompt": "a b", "max_tokens": 10**6}]}
        response = client.post(TOKEN_CHECK, json=body)

    assert response.json() == {"prompts": [{"fits": True, "tokenCount": 2, "contextLength": None}]}


def test_errors_name_the_item(client: TestClient) -> None:
    body = {
        "prompts": [
            {"model": "echo", "prompt": "fine", "max_tokens": 1},
            {"model": "ghost", "prompt": "x", "max_tokens": 1},
        ]
    }

    response = client.post(TOKEN_CHECK, json=body)

    assert response.status_code == 404
    assert response.json()["error"]["param"] == "prompts.1.model"


def test_embedding_models_are_refused(client: TestClient) -> None:
    body = {"prompts": [{"model": "embedder", "prompt": "x", "max_tokens": 1}]}

    response = client.post(TOKEN_CHECK, json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompts.0.model"


def test_bad_body_is_400(client: TestClient) -> None:
    response = client.post(TOKEN_CHECK, json={"prompts": [{"model": "echo", "prompt": "x"}]})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompts.0.max_tokens"


def test_token_check_needs_the_api_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=["k"])
    body = {"prompts": [{"model": "echo", "prompt": "x", "max_tokens": 1}]}

    assert client.post(TOKEN_CHECK, json=body).status_code == 401
    authorised = client.post(TOKEN_CHECK, json=body, headers={"Authorization": "Bearer k"})
    assert authorised.status_code == 200


def test_a_model_that_cannot_count_is_refused_without_asking_it() -> None:
    fake = FakeLLMClient([ModelCard("m", "m", 64, inputs=frozenset())])
    with TestClient(create_app(GatewaySettings(), fake)) as client:
        body = {"prompts": [{"model": "m", "prompt": "a b", "max_tokens": 1}]}
        response = client.post(TOKEN_CHECK, json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompts.0.model"
    assert fake.counted == []
