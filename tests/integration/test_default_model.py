"""The real path: tritonserver + chatllm backend + SmolLM2-135M-Instruct + gateway, on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import DEFAULT_REPOSITORY
from .servers import TritonProcess, launch_gateway, launch_triton

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[TritonProcess, str]]:
    with launch_triton(DEFAULT_REPOSITORY) as triton, launch_gateway([triton.grpc_url]) as gateway:
        yield triton, gateway


@pytest.fixture(scope="module")
def client(stack: tuple[TritonProcess, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack[1]}/v1", api_key="unused", max_retries=0)


def metric(triton: TritonProcess, name: str) -> float:
    """The value of one metric sample of the default model on Triton's metrics endpoint."""
    text = httpx.get(triton.metrics_url, timeout=10).text
    match = re.search(rf'^{name}{{[^}}]*model="{MODEL}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} missing from {triton.metrics_url}"
    return float(match.group(1))


def test_greedy_answer_contains_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0


def test_streaming_answer_contains_paris(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_alias_and_completions_endpoint(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list().data} >= {MODEL, "smollm2"}
    reply = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=4,
                                      temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_metrics_count_successful_requests(stack: tuple[TritonProcess, str], client: openai.OpenAI) -> None:
    triton = stack[0]
    before = metric(triton, "nv_inference_request_success")
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert metric(triton, "nv_inference_request_success") == before + 1


def test_eight_concurrent_streams_are_batched_together(stack: tuple[TritonProcess, str],
                                                       client: openai.OpenAI) -> None:
    def ask(i: int) -> tuple[str, str | None]:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count from 1 to {20 + i}."}], temperature=0,
            max_tokens=24, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert all(text and reason in ("stop", "length") for text, reason in results)
    # The engine's largest running batch (a backend metric) held several sequences at once.
    assert metric(stack[0], "chatllm_max_batch_size") >= 4


def test_client_disconnect_frees_the_slot(stack: tuple[TritonProcess, str]) -> None:
    triton, gateway = stack
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 4000, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]  # a few chunks: the generation is running
        assert any('"content"' in line for line in seen)
        assert metric(triton, "chatllm_running_sequences") >= 1
    # 4000 tokens would take minutes; after the disconnect the sequence must leave the batch.
    deadline = time.monotonic() + 20
    while metric(triton, "chatllm_running_sequences") > 0:
        assert time.monotonic() < deadline, "the cancelled generation still runs"
        time.sleep(0.2)  # polling a metric with a deadline
    health = httpx.get(f"{gateway}/health", timeout=10)
    assert health.status_code == 200


def test_bad_sampling_value_is_a_400_and_the_server_stays_up(stack: tuple[TritonProcess, str],
                                                              client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=100000)
    assert "maximum context length" in str(info.value)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert reply.choices[0].message.content
