"""Every failure is answered in OpenAI's error shape with the right status."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from gateway.errors import upstream_error
from gateway.protocol import ErrorResponse
from tests.unit.gateway.fakes import HANG, FakeLLMClient, chunk, sse_events

CHAT = "/v1/chat/completions"


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra}


def assert_openai_error(response_json: dict[str, object]) -> dict[str, object]:
    ErrorResponse.model_validate(response_json)  # exactly {"error": {message, type, param, code}}
    error = response_json["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"top_k": -2}, "top_k"),
        ({"stop": [1]}, "stop.0"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         "messages.0.content.0.type"),
        ({"model": ""}, "model"),
        ({"logprobs": "maybe"}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"seed": "abc"}, "seed"),
        ({"stream": "sometimes"}, "stream"),
        ({"stream_options": {"include_usage": "often"}}, "stream_options.include_usage"),
        ({"user": 7}, "user"),
        ({"messages": "a plain string"}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": "embedder"}, "model"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ],
)
def test_invalid_fields_are_400_naming_the_param(
    client: TestClient, fake: FakeLLMClient, extra: dict[str, object], param: str
) -> None:
    response = client.post(CHAT, json=chat_body(**extra))

    assert response.status_code == 400, response.text
    error = assert_openai_error(response.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fake.inputs == []


def test_missing_model_is_400(client: TestClient) -> None:
    response = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})

    assert response.status_code == 400
    assert assert_openai_error(response.json())["param"] == "model"


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        CHAT,
        content=b'{"model": "echo", "messages": [',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert "JSON" in str(assert_openai_error(response.json())["message"])


def test_body_without_json_content_type_is_400_saying_so(client: TestClient) -> None:
    response = client.post(
        CHAT, content=b'{"model": "echo"}', headers={"content-type": "text/plain"}
    )

    assert response.status_code == 400
    assert "Content-Type" in str(assert_openai_error(response.json())["message"])


def test_unknown_model_is_404_before_generation(client: TestClient, fake: FakeLLMClient) -> None:
    response = client.post(CHAT, json=chat_body(model="gpt-nope"))

    assert response.status_code == 404
    error = assert_openai_error(response.json())
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert fake.inputs == []


def test_unknown_route_is_404_in_openai_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")

    assert response.status_code == 404
    assert_openai_error(response.json())


@pytest.mark.parametrize(
    ("message", "status", "shown", "retry_after"),
    [
        ("[INVALID_ARG] prompt too long", 400, "prompt too long", None),
        ("[RESOURCE_EXHAUSTED] queue full", 429, "queue full", "1"),
        ("Exceeds maximum queue size", 429, "Exceeds maximum queue size", "1"),
        ("[UNAVAILABLE] engine stopping", 503, "engine stopping", "1"),
        ("[INTERNAL] engine died", 500, "engine died", None),
        ("something odd", 500, "something odd", None),
        ("Request for unknown model: 'x'", 404, "Request for unknown model: 'x'", None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_before_output_map_to_http_status(
    client: TestClient,
    fake: FakeLLMClient,
    message: str,
    status: int,
    shown: str,
    retry_after: str | None,
    stream: bool,
) -> None:
    fake.queue([upstream_error(message)])

    response = client.post(CHAT, json=chat_body(stream=stream))

    assert response.status_code == status
    error = assert_openai_error(response.json())
    assert error["message"] == shown
    assert response.headers.get("retry-after") == retry_after


def test_error_after_output_is_one_error_event_then_done(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue([chunk("partial ", prompt_tokens=1), upstream_error("[UNAVAILABLE] engine died")])

    response = client.post(CHAT, json=chat_body(stream=True))

    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["delta"] for e in events[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "partial "},
    ]
    assert_openai_error(events[2])
    assert events[2]["error"]["message"] == "engine died"
    assert len(events) == 4


@pytest.mark.timeout(20)
def test_error_in_one_choice_cancels_the_others(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(
        [chunk("a", prompt_tokens=1), upstream_error("[INTERNAL] boom")],
        [chunk("b", prompt_tokens=1), chunk("c"), HANG],
    )

    response = client.post(CHAT, json=chat_body(n=2, stream=True))

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2]
    assert fake.closed_early_event.wait(5)


def test_non_streaming_upstream_error_mid_generation_is_an_http_error(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(
        [chunk("partial ", prompt_tokens=1), upstream_error("[RESOURCE_EXHAUSTED] kv cache full")]
    )

    response = client.post(CHAT, json=chat_body())

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert assert_openai_error(response.json())["type"] == "rate_limit_error"


def test_model_list_failure_is_503(client: TestClient, fake: FakeLLMClient) -> None:
    fake.list_error = upstream_error("failed to connect to all addresses", "StatusCode.UNAVAILABLE")

    response = client.post(CHAT, json=chat_body())

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert_openai_error(response.json())


class TestAuth:
    @pytest.fixture
    def authed(self, make_client: Callable[..., TestClient]) -> TestClient:
        return make_client(api_keys=["k1", "k2"])

    def test_missing_key_is_401(self, authed: TestClient) -> None:
        response = authed.post(CHAT, json=chat_body())

        assert response.status_code == 401
        assert assert_openai_error(response.json())["code"] == "invalid_api_key"

    def test_wrong_key_is_401_even_with_a_bad_body(self, authed: TestClient) -> None:
        response = authed.post(
            CHAT,
            content=b"{not json",
            headers={"Authorization": "Bearer nope", "content-type": "application/json"},
        )

        assert response.status_code == 401
        assert_openai_error(response.json())

    @pytest.mark.parametrize("key", ["k1", "k2"])
    def test_valid_keys_pass(self, authed: TestClient, key: str) -> None:
        response = authed.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {key}"})

        assert response.status_code == 200

    def test_models_need_a_key(self, authed: TestClient) -> None:
        assert authed.get("/v1/models").status_code == 401
        assert authed.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200

    def test_health_is_open(self, authed: TestClient) -> None:
        assert authed.get("/health").status_code == 200
