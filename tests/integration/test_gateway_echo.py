"""The gateway in front of a real tritonserver serving the deterministic echo model.

The echo model (tests/model_repository/echo) streams the words of its input, one per
response; `FAIL` in the input makes it refuse with `[INVALID_ARG]`, `SLOW` makes it pause
between words so a client can go away mid-stream; it counts cancelled requests in the
`echo_cancelled_requests_total` metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.integration.polling import wait_until
from tests.integration.servers import TritonProcess

pytestmark = pytest.mark.integration



@pytest.fixture
def oai(echo_gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{echo_gateway}/v1", api_key="unused", max_retries=0, timeout=30)


def cancelled_count(triton: TritonProcess) -> int:
    text = httpx.get(triton.metrics_url, timeout=5).text
    match = re.search(r'^echo_cancelled_requests_total\{[^}]*\} (\d+)', text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_models_list_the_echo_model_and_its_alias(oai: openai.OpenAI) -> None:
    models = {m.id: m for m in oai.models.list().data}

    assert set(models) == {"echo", "echo-alias"}
    assert models["echo-alias"].model_extra is not None
    assert models["echo-alias"].model_extra["context_length"] == 256
    assert models["echo-alias"].model_extra["root"] == "echo"


def test_chat_through_the_alias(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(
        model="echo-alias",
        messages=[
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": "hello there world"},
        ],
    )

    assert answer.model == "echo-alias"
    assert answer.choices[0].message.content == "hello there world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 3)


def test_chat_streaming_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three four"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 3)


def test_completions_with_several_prompts_and_n(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(
        model="echo", prompt=["a b", "c d e"], n=2, max_tokens=2, echo=True
    )

    assert [(c.index, c.text, c.finish_reason) for c in answer.choices] == [
        (0, "a ba b", "stop"),
        (1, "a ba b", "stop"),
        (2, "c d ec d", "length"),
        (3, "c d ec d", "length"),
    ]
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 8)


def test_stop_strings_are_cut(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(model="echo", prompt="keep this END drop that", stop=["END"])

    assert answer.choices[0].text == "keep this "
    assert answer.choices[0].finish_reason == "stop"


def test_raw_sse_framing_with_two_choices(echo_gateway: str) -> None:
    messages = [{"role": "user", "content": "x y"}]
    body = {"model": "echo", "messages": messages, "stream": True, "n": 2}
    with httpx.stream("POST", f"{echo_gateway}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()

    blocks = raw.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    assert all(b.startswith("data: ") for b in blocks[:-1])
    assert len({e["id"] for e in events}) == 1
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == "x y"
        assert [c["finish_reason"] for c in mine][-1] == "stop"


def test_fastchat_route_with_a_plain_string(echo_gateway: str) -> None:
    response = httpx.post(
        f"{echo_gateway}/api/v1/chat/completions",
        json={
            "model": "echo",
            "messages": "fastchat says hi",
            "top_k": 5,
            "repetition_penalty": 1.1,
        },
        timeout=30,
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "fastchat says hi"


def test_model_error_is_a_400_and_the_server_stays_healthy(
    oai: openai.OpenAI, echo_gateway: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "please FAIL now"}]
        )
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "echo refuses FAIL",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }

    with pytest.raises(openai.BadRequestError):
        list(oai.completions.create(model="echo", prompt="FAIL", stream=True))

    assert httpx.get(f"{echo_gateway}/health", timeout=5).status_code == 200
    again = oai.completions.create(model="echo", prompt="still alive")
    assert again.choices[0].text == "still alive"


def test_unknown_model_is_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.completions.create(model="no-such-model", prompt="x")
    assert caught.value.code == "model_not_found"


def test_streaming_client_disconnect_cancels_the_triton_request(
    echo_gateway: str, echo_triton: TritonProcess, oai: openai.OpenAI
) -> None:
    before = cancelled_count(echo_triton)
    messages = [{"role": "user", "content": "SLOW " + "word " * 400}]
    body = {"model": "echo", "messages": messages, "stream": True}

    with httpx.stream("POST", f"{echo_gateway}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        first_events = [line for line in (next(lines) for _ in range(6)) if line]
    assert len(first_events) == 3  # role chunk and two words, then we hang up

    wait_until(lambda: cancelled_count(echo_triton) > before, "the echo model to see the cancellation")
    after = oai.completions.create(model="echo", prompt="next request")
    assert after.choices[0].text == "next request"


def test_non_streaming_client_disconnect_cancels_the_triton_request(
    echo_gateway: str, echo_triton: TritonProcess
) -> None:
    before = cancelled_count(echo_triton)
    body = {"model": "echo", "prompt": "SLOW " + "word " * 400}

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{echo_gateway}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))

    wait_until(lambda: cancelled_count(echo_triton) > before, "the echo model to see the cancellation")


def test_api_keys(echo_triton: TritonProcess, start_gateway: Callable[..., str]) -> None:
    base = start_gateway([echo_triton.grpc_url], api_keys=["secret"])

    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    denied = httpx.get(f"{base}/v1/models", timeout=5)
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="secret", max_retries=0)
    assert client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "authorised"}]
    ).choices[0].message.content == "authorised"


def test_a_tool_round_trip_with_the_openai_client(oai: openai.OpenAI) -> None:
    """Call (a named tool: the echo model answers the arguments it is sent), tool message, answer."""
    tools: list[Any] = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages: list[Any] = [{"role": "user", "content": '{"city": "Oslo"}'}]
    first = oai.chat.completions.create(model="echo", messages=messages, tools=tools,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "minus three degrees"}]
    second = oai.chat.completions.create(model="echo", messages=messages, tools=tools)

    assert second.choices[0].message.content == "minus three degrees"
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls


def test_malformed_constraints_and_tool_choices_are_400s_and_the_server_stays_up(echo_gateway: str) -> None:
    from tests.unit.gateway.test_gateway_structured import MALFORMED

    assert len(MALFORMED) >= 20
    for extra, param in MALFORMED:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
        response = httpx.post(f"{echo_gateway}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    reply = httpx.post(f"{echo_gateway}/v1/chat/completions", timeout=30,
                       json={"model": "echo", "messages": [{"role": "user", "content": "still fine"}]})
    assert reply.json()["choices"][0]["message"]["content"] == "still fine"
