"""FastChat's controller and worker API on the gateway, with a fake client."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from fastapi.testclient import TestClient

from gateway.errors import UpstreamError
from tests.unit.gateway.fakes import FakeLLMClient, chunk, token_logprob, words_script


def frames(body: bytes) -> list[dict[str, Any]]:
    """FastChat's stream: JSON objects, each followed by a NUL byte."""
    assert body.endswith(b"\0"), body[-100:]
    return [json.loads(part) for part in body.split(b"\0")[:-1]]


def test_controller_lists_models_and_answers_its_own_address(client: TestClient) -> None:
    assert client.post("/refresh_all_workers").status_code == 200
    assert client.post("/list_models").json() == {"models": ["echo", "echo-alias", "embedder"]}
    assert client.post("/list_language_models").json() == {"models": ["echo", "echo-alias"]}
    assert client.post("/list_multimodal_models").json() == {"models": []}
    assert client.post("/get_worker_address", json={"model": "echo"}).json() == {
        "address": "http://testserver"
    }
    assert client.post("/get_worker_address", json={"model": "nope"}).json() == {"address": ""}
    assert client.get("/test_connection").text == "success"


def test_stream_is_cumulative_text_with_usage_and_finish_reason(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(words_script("Paris is nice", prompt_tokens=5))

    response = client.post(
        "/worker_generate_stream",
        json={
            "model": "echo-alias",
            "prompt": "USER: hi\nASSISTANT:",
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": -1,
            "repetition_penalty": 1.1,
            "max_new_tokens": 32,
            "stop": "###",
            "stop_token_ids": [2, 7],
            "echo": False,
            "images": [],
        },
    )

    assert response.status_code == 200
    objects = frames(response.content)
    assert [o["text"] for o in objects] == ["Paris ", "Paris is ", "Paris is nice"]
    assert {o["error_code"] for o in objects} == {0}
    assert [o["finish_reason"] for o in objects] == [None, None, "stop"]
    assert objects[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    (inp,) = fake.inputs
    assert inp.model == "echo" and inp.prompt == "USER: hi\nASSISTANT:" and inp.messages is None
    s = inp.sampling
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (0.7, 0.9, None, 1.1)
    assert (s.max_tokens, s.stop, s.stop_token_ids) == (32, ("###",), (2, 7))


def test_echo_is_the_default_and_stop_strings_are_cut(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue([chunk("a b", None, 2), chunk(" STOP c", "length")])

    objects = frames(
        client.post(
            "/worker_generate_stream",
            json={"model": "echo", "prompt": "Q:", "stop": ["STOP"]},
        ).content
    )

    assert objects[-1]["text"] == "Q:a b "
    assert objects[-1]["finish_reason"] == "stop"
    assert fake.inputs[0].sampling.max_tokens == 256  # FastChat's default


def test_worker_generate_returns_the_last_object_with_logprobs(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(
        [
            chunk("x ", None, 1, logprobs=(token_logprob("x ", -0.5),)),
            chunk("y", "length", logprobs=(token_logprob("y", -1.0),)),
        ]
    )

    body = client.post(
        "/worker_generate",
        json={"model": "echo", "prompt": "p", "echo": False, "logprobs": 1},
    ).json()

    assert body["text"] == "x y" and body["finish_reason"] == "length"
    assert body["logprobs"]["tokens"] == ["x ", "y"]
    assert body["logprobs"]["token_logprobs"] == [-0.5, -1.0]
    assert body["logprobs"]["text_offset"] == [0, 2]


def test_errors_are_in_band_with_fastchat_codes(client: TestClient, fake: FakeLLMClient) -> None:
    unknown = frames(
        client.post("/worker_generate_stream", json={"model": "nope", "prompt": "x"}).content
    )
    assert unknown == [{"text": "The model `nope` does not exist.", "error_code": 40301}]

    bad = frames(
        client.post(
            "/worker_generate_stream", json={"model": "echo", "prompt": "x", "top_p": 7}
        ).content
    )
    assert bad[0]["error_code"] == 40302 and "top_p" in bad[0]["text"]

    fake.queue([UpstreamError(429, "queue full", "rate_limit_error")])
    busy = client.post("/worker_generate", json={"model": "echo", "prompt": "x"})
    assert busy.status_code == 200
    assert busy.json() == {"text": "queue full", "error_code": 42903}

    fake.queue([chunk("half", None, 1), UpstreamError(503, "server died", "x")])
    broken = frames(
        client.post("/worker_generate_stream", json={"model": "echo", "prompt": "x"}).content
    )
    assert broken[0]["text"] == "xhalf"
    assert broken[-1] == {"text": "server died", "error_code": 50005}


def test_worker_details(client: TestClient, fake: FakeLLMClient) -> None:
    assert client.post("/model_details", json={"model": "echo"}).json() == {"context_length": 256}
    assert client.post("/count_token", json={"model": "echo", "prompt": "a b c"}).json() == {
        "count": 3,
        "error_code": 0,
    }
    conv = client.post("/worker_get_conv_template", json={"model": "echo"}).json()["conv"]
    assert conv["name"] == "chatml" and conv["sep_style"] == 9 and conv["messages"] == []
    status = client.post("/worker_get_status").json()
    assert status["model_names"] == ["echo", "echo-alias", "embedder"]
    assert status["speed"] == 1


def test_embeddings_plain_and_base64(client: TestClient) -> None:
    plain = client.post(
        "/worker_get_embeddings", json={"model": "embedder", "input": ["a b", "c"]}
    ).json()
    assert plain["token_num"] == 3 and len(plain["embedding"]) == 2

    packed = client.post(
        "/worker_get_embeddings",
        json={"model": "embedder", "input": ["a b"], "encoding_format": "base64"},
    ).json()
    raw = base64.b64decode(packed["embedding"][0])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == plain["embedding"][0]

    wrong = client.post("/worker_get_embeddings", json={"model": "echo", "input": ["a"]}).json()
    assert wrong["error_code"] == 40302


def test_registered_fastchat_workers_are_listed_and_expire(client: TestClient) -> None:
    status = {"model_names": ["vicuna"], "speed": 1, "queue_length": 0}
    client.post(
        "/register_worker",
        json={"worker_name": "http://w1:31000", "check_heart_beat": True, "worker_status": status},
    )

    assert "vicuna" in client.post("/list_models").json()["models"]
    assert client.post("/get_worker_address", json={"model": "vicuna"}).json() == {
        "address": "http://w1:31000"
    }
    beat = {"worker_name": "http://w1:31000", "queue_length": 2}
    assert client.post("/receive_heart_beat", json=beat).json() == {"exist": True}
    unknown = {"worker_name": "http://w2:1", "queue_length": 0}
    assert client.post("/receive_heart_beat", json=unknown).json() == {"exist": False}


def test_register_triton_needs_a_router(client: TestClient) -> None:
    response = client.post("/register_triton", json={"address": "127.0.0.1:8001"})
    assert response.status_code == 501
