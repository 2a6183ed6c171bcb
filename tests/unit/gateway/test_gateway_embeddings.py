"""`/v1/embeddings` with a fake client: shapes, encodings, aliases and errors."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import upstream_error
from gateway.llm_client import ModelCard
from gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeLLMClient, fake_vector

EMBEDDINGS = "/v1/embeddings"


def test_a_list_of_texts_gives_one_vector_each_in_order(
    client: TestClient, fake: FakeLLMClient
) -> None:
    response = client.post(EMBEDDINGS, json={"model": "embedder", "input": ["a", "bb cc"]})

    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": fake_vector("a")},
            {"object": "embedding", "index": 1, "embedding": fake_vector("bb cc")},
        ],
        "model": "embedder",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert fake.embedded == [("embedder", ["a", "bb cc"])]


def test_a_single_string(client: TestClient) -> None:
    response = client.post(EMBEDDINGS, json={"model": "embedder", "input": "hello"})

    assert [d["embedding"] for d in response.json()["data"]] == [fake_vector("hello")]


def test_base64_is_little_endian_float32(client: TestClient) -> None:
    response = client.post(
        EMBEDDINGS, json={"model": "embedder", "input": ["xyz"], "encoding_format": "base64"}
    )

    encoded = response.json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.tolist() == fake_vector("xyz")


def test_an_alias_maps_to_the_triton_model_and_is_echoed() -> None:
    fake = FakeLLMClient([ModelCard("minilm", "all-minilm", 256, "embed")])
    with TestClient(create_app(GatewaySettings(), fake)) as client:
        response = client.post(EMBEDDINGS, json={"model": "minilm", "input": "x"})

    assert response.json()["model"] == "minilm"
    assert fake.embedded == [("all-minilm", ["x"])]


def test_fastchat_engines_route_takes_the_model_from_the_path(
    client: TestClient, fake: FakeLLMClient
) -> None:
    response = client.post("/v1/engines/embedder/embeddings", json={"input": ["a"]})

    assert response.status_code == 200
    assert fake.embedded == [("embedder", ["a"])]


def test_matching_dimensions_are_accepted(client: TestClient) -> None:
    response = client.post(EMBEDDINGS, json={"model": "embedder", "input": "a", "dimensions": 4})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "embedder", "input": ""}, 400, "input"),
        ({"model": "embedder", "input": []}, 400, "input"),
        ({"model": "embedder", "input": ["ok", ""]}, 400, "input"),
        ({"model": "embedder", "input": ["a"] * 2049}, 400, "input"),
        ({"model": "embedder", "input": [1, 2, 3]}, 400, "input.0"),
        ({"model": "embedder", "input": [[1, 2]]}, 400, "input.0"),
        ({"model": "embedder"}, 400, "input"),
        ({"input": "x"}, 400, "model"),
        ({"model": "embedder", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": "embedder", "input": "x", "dimensions": 3}, 400, "dimensions"),
        ({"model": "embedder", "input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"model": "echo", "input": "x"}, 400, "model"),
        ({"model": "nope", "input": "x"}, 404, "model"),
    ],
)
def test_bad_requests(
    client: TestClient, body: dict[str, object], status: int, param: str
) -> None:
    response = client.post(EMBEDDINGS, json=body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


def test_an_embedding_model_is_refused_for_chat(client: TestClient, fake: FakeLLMClient) -> None:
    body = {"model": "embedder", "messages": [{"role": "user", "content": "x"}]}

    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert "/v1/embeddings" in response.json()["error"]["message"]
    assert fake.inputs == []


@pytest.mark.parametrize(
    ("message", "status", "retry_after"),
    [
        ("[request id: embd-1-0] Exceeds maximum queue size", 429, "1"),
        ("[UNAVAILABLE] shutting down", 503, "1"),
        ("[INTERNAL] boom", 500, None),
    ],
)
def test_upstream_failures_map_to_status(
    client: TestClient, fake: FakeLLMClient, message: str, status: int, retry_after: str | None
) -> None:
    fake.embed_error = upstream_error(message, "StatusCode.UNAVAILABLE")

    response = client.post(EMBEDDINGS, json={"model": "embedder", "input": "x"})

    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert not response.json()["error"]["message"].startswith("[")


def test_embeddings_need_the_api_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=["k"])
    body = {"model": "embedder", "input": "x"}

    assert client.post(EMBEDDINGS, json=body).status_code == 401
    authorised = client.post(EMBEDDINGS, json=body, headers={"Authorization": "Bearer k"})
    assert authorised.status_code == 200
