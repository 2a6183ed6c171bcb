"""The OpenAI and FastChat API surface end to end: the official `openai` client, curl and raw
HTTP against the gateway (with an API key) in front of a real tritonserver.

Models: the deterministic echo model (see tests/model_repository/echo), and `echo-q1`, the same
model with room for one queued request (`max_batch_size: 1`, `max_queue_size: 1`), to see
Triton refuse a request when its queue is full.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.integration.polling import wait_until
from tests.integration.servers import TritonProcess, copy_echo, launch_gateway, launch_triton

pytestmark = pytest.mark.integration

API_KEY = "integration-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DEADLINE_S = 15.0
FASTCHAT_REQUEST: dict[str, Any] = {
    "model": "echo",
    "messages": "请用中文回答，你是谁？",
    "temperature": 0.7,
    "top_p": 1,
    "top_k": 3,
    "n": 1,
    "max_tokens": 2000,
    "stop": ["string"],
    "stream": True,
    "user": "someone",
    "repetition_penalty": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
}


def _tiny_queue_config(config: str) -> str:
    config = config.replace('name: "echo"', 'name: "echo-q1"')
    config = config.replace("max_batch_size: 8", "max_batch_size: 1")
    config = config.replace(
        "dynamic_batching {}", "dynamic_batching {\n  default_queue_policy { max_queue_size: 1 }\n}"
    )
    config = config.replace('string_value: "echo-alias"', 'string_value: ""')
    assert all(s in config for s in ('name: "echo-q1"', "max_queue_size: 1", "max_batch_size: 1"))
    return config


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    repository = copy_echo(tmp_path_factory.mktemp("surface_repository"), "echo", "echo-q1")
    config = repository / "echo-q1" / "config.pbtxt"
    config.write_text(_tiny_queue_config(config.read_text()))
    with launch_triton(repository) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(triton: TritonProcess) -> Iterator[str]:
    with launch_gateway([triton.grpc_url], api_keys=[API_KEY]) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def oai(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def assert_healthy(gateway: str, oai: openai.OpenAI) -> None:
    assert httpx.get(f"{gateway}/health", timeout=5).status_code == 200
    answer = oai.completions.create(model="echo", prompt="still here")
    assert answer.choices[0].text == "still here"


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


# ---- fields, with the openai client ------------------------------------------------------


def test_chat_fields_non_streaming(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(
        model="echo-alias",
        messages=[{"role": "user", "content": "alpha beta STOPHERE gamma"}],
        n=3,
        stop=["", "STOP"],
        max_completion_tokens=10,
        temperature=0.3,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=7,
        user="tester",
        extra_body={"top_k": 5, "repetition_penalty": 1.1},
    )

    assert answer.model == "echo-alias"
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert {(c.message.content, c.finish_reason) for c in answer.choices} == {
        ("alpha beta ", "stop")
    }
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (
        4,
        4 + answer.usage.completion_tokens,
    )


def test_finish_reason_is_length_only_when_max_tokens_cut(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "one two three"}]

    cut = oai.chat.completions.create(model="echo", messages=messages, max_tokens=2)
    whole = oai.chat.completions.create(model="echo", messages=messages, max_tokens=3)
    default = oai.chat.completions.create(model="echo", messages=messages)

    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("one two", "length")
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == (
        "one two three",
        "stop",
    )
    assert default.choices[0].finish_reason == "stop"


def test_chat_streaming_n_with_usage_chunk(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "red green blue"}],
        n=2,
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    *choice_chunks, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 4)
    assert all(c.usage is None and len(c.choices) == 1 for c in choice_chunks)
    for index in (0, 1):
        mine = [c.choices[0] for c in choice_chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == "red green"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
        assert mine[-1].finish_reason == "length"


def test_chat_logprobs(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "to be"}]

    answer = oai.chat.completions.create(
        model="echo", messages=messages, logprobs=True, top_logprobs=2
    )
    chunks = list(
        oai.chat.completions.create(
            model="echo", messages=messages, logprobs=True, top_logprobs=2, stream=True
        )
    )

    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [(t.token, t.logprob) for t in content] == [("to ", -0.25), ("be", -0.5)]
    assert [[(a.token, a.logprob) for a in t.top_logprobs] for t in content] == [
        [("to ", -0.25), ("alt1", -1.25)],
        [("be", -0.5), ("alt1", -1.5)],
    ]
    assert content[0].bytes == list(b"to ")
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert [(t.token, t.logprob, len(t.top_logprobs)) for t in streamed] == [
        ("to ", -0.25, 2),
        ("be", -0.5, 2),
    ]
    plain = oai.chat.completions.create(model="echo", messages=messages)
    assert plain.choices[0].logprobs is None


def test_completions_prompt_list_echo_and_n(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(
        model="echo", prompt=["a b", "c d e"], n=2, max_tokens=2, echo=True, seed=1
    )

    assert [(c.index, c.text, c.finish_reason) for c in answer.choices] == [
        (0, "a ba b", "stop"),
        (1, "a ba b", "stop"),
        (2, "c d ec d", "length"),
        (3, "c d ec d", "length"),
    ]


def test_completions_streaming_with_logprobs_and_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.completions.create(
            model="echo",
            prompt="x yy zzz",
            logprobs=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    answer = oai.completions.create(model="echo", prompt="x yy zzz", logprobs=1)

    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == "x yy zzz"
    offsets = [o for c in text_chunks if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset or []]
    assert offsets == [0, 2, 5]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["x ", "yy ", "zzz"]
    assert logprobs.token_logprobs == [-0.25, -0.5, -0.75]
    assert logprobs.top_logprobs == [{"x ": -0.25}, {"yy ": -0.5}, {"zzz": -0.75}]
    assert logprobs.text_offset == [0, 2, 5]


def test_models_list_aliases_and_context_length(oai: openai.OpenAI) -> None:
    models = {m.id: m.model_extra or {} for m in oai.models.list().data}

    assert set(models) == {"echo", "echo-alias", "echo-q1"}
    assert models["echo-alias"]["root"] == "echo"
    assert models["echo"]["context_length"] == 256


# ---- FastChat --------------------------------------------------------------------------


def test_fastchat_request_with_curl_streams_role_content_final_done(gateway: str) -> None:
    done = subprocess.run(
        [
            "curl", "-sS", "--no-buffer", "--max-time", "30",
            "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {API_KEY}",
            "-d", json.dumps(FASTCHAT_REQUEST, ensure_ascii=False),
            f"{gateway}/api/v1/chat/completions",
        ],
        capture_output=True, check=True, timeout=60,
    )

    blocks = done.stdout.decode().split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    choices = [e["choices"][0] for e in events]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["delta"].get("content", "") for c in choices[1:]) == "请用中文回答，你是谁？"
    assert choices[-1]["delta"] == {} and choices[-1]["finish_reason"] == "stop"
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_fastchat_token_check(gateway: str) -> None:
    body = {
        "prompts": [
            {"model": "echo", "prompt": "three small words", "max_tokens": 253},
            {"model": "echo-alias", "prompt": "three small words", "max_tokens": 254},
        ]
    }

    response = httpx.post(f"{gateway}/api/v1/token_check", json=body, headers=AUTH, timeout=30)

    assert response.status_code == 200
    assert response.json() == {
        "prompts": [
            {"fits": True, "tokenCount": 3, "contextLength": 256},
            {"fits": False, "tokenCount": 3, "contextLength": 256},
        ]
    }


# ---- errors, with raw HTTP -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b'{"model": "echo", "messages": [', None),
        ("/v1/chat/completions", b'["not", "an", "object"]', None),
        ("/v1/chat/completions", {"model": "echo", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "robot", "content": "x"}]},
         "messages.0.role"),
        ("/v1/chat/completions", {"model": "echo", "messages": "just text"}, "messages"),
        ("/v1/chat/completions", {"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions",
         {"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
        ("/v1/chat/completions",
         {"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ("/v1/chat/completions",
         {"model": "echo", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs"),
        ("/v1/completions", {"model": "echo", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"model": "echo", "prompt": [1, 2]}, "prompt.0"),
        ("/v1/embeddings", {"model": "echo", "input": "x"}, "model"),
        ("/api/v1/token_check", {"prompts": [{"model": "echo", "prompt": "x"}]}, "prompts.0.max_tokens"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    gateway: str, oai: openai.OpenAI, path: str, body: bytes | dict[str, Any], param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, "Content-Type": "application/json"}

    response = httpx.post(f"{gateway}{path}", content=content, headers=headers, timeout=30)

    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert_healthy(gateway, oai)


def test_model_refusal_is_400_in_openai_shape(gateway: str, oai: openai.OpenAI) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "FAIL please"}], "stream": True}

    response = httpx.post(f"{gateway}/v1/chat/completions", json=body, headers=AUTH, timeout=30)

    assert assert_openai_error(response, 400)["message"] == "echo refuses FAIL"
    assert_healthy(gateway, oai)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_unknown_model_is_404(gateway: str, path: str) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "prompt": "x",
            "input": "x"}

    response = httpx.post(f"{gateway}{path}", json=body, headers=AUTH, timeout=30)

    error = assert_openai_error(response, 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"),
     ("POST", "/api/v1/token_check"), ("POST", "/api/v1/chat/completions")],
)
def test_missing_or_wrong_api_key_is_401(
    gateway: str, method: str, path: str, headers: dict[str, str]
) -> None:
    response = httpx.request(method, f"{gateway}{path}", json={}, headers=headers, timeout=30)

    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"


def test_health_needs_no_key(gateway: str) -> None:
    assert httpx.get(f"{gateway}/health", timeout=5).status_code == 200


def pending_requests(triton: TritonProcess, model: str) -> int:
    text = httpx.get(triton.metrics_url, timeout=5).text
    pattern = rf'^nv_inference_pending_request_count{{[^}}]*model="{model}"[^}}]*}} (\d+)'
    match = re.search(pattern, text, re.MULTILINE)
    assert match, "Triton reports no pending request count"
    return int(match.group(1))


def test_full_triton_queue_is_429_with_retry_after(
    gateway: str, triton: TritonProcess, oai: openai.OpenAI
) -> None:
    """echo-q1 runs one request at a time and queues one more; a third one is refused."""
    running = {"model": "echo-q1", "prompt": "SLOW " + "word " * 400, "stream": True}
    queued: dict[str, httpx.Response] = {}

    def send_queued() -> None:
        queued["response"] = httpx.post(
            f"{gateway}/v1/completions", json={"model": "echo-q1", "prompt": "queued one"},
            headers=AUTH, timeout=30,
        )

    with httpx.stream("POST", f"{gateway}/v1/completions", json=running, headers=AUTH,
                      timeout=30) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept: dropping the iterator would close the connection
        assert next(lines).startswith("data: ")  # the first word: the slow request is executing
        waiter = threading.Thread(target=send_queued)
        waiter.start()
        wait_until(lambda: pending_requests(triton, "echo-q1") == 1, "the second request to queue")

        refused = httpx.post(f"{gateway}/v1/completions", json={"model": "echo-q1", "prompt": "x"},
                             headers=AUTH, timeout=30)

        error = assert_openai_error(refused, 429)
        assert refused.headers["retry-after"] == "1"
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "queue" in error["message"]
    # Hanging up cancels the slow request; the queued one runs next.
    waiter.join(timeout=DEADLINE_S)
    assert not waiter.is_alive()
    assert queued["response"].status_code == 200
    assert queued["response"].json()["choices"][0]["text"] == "queued one"
    assert_healthy(gateway, oai)
