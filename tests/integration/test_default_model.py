"""The real path: tritonserver + chatllm backend + SmolLM2-135M-Instruct + gateway, on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess

import httpx
import openai
import pytest

from .metrics import disconnect_mid_stream, model_metric
from .servers import TritonProcess

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France? Answer in one word."


def test_greedy_answer_contains_paris(default_client: openai.OpenAI) -> None:
    reply = default_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0


def test_streaming_answer_contains_paris(default_client: openai.OpenAI) -> None:
    chunks = list(default_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_alias_and_completions_endpoint(default_client: openai.OpenAI) -> None:
    models = {m.id: getattr(m, "engine", None) for m in default_client.models.list().data}
    assert models[MODEL] == models["smollm2"] == "ours", "our batching engine took SmolLM2"
    reply = default_client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=4,
                                              temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_metrics_count_successful_requests(default_stack: tuple[TritonProcess, str],
                                           default_client: openai.OpenAI) -> None:
    triton = default_stack[0]
    before = model_metric(triton, MODEL, "nv_inference_request_success")
    default_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert model_metric(triton, MODEL, "nv_inference_request_success") == before + 1


def test_eight_concurrent_streams_are_batched_together(default_stack: tuple[TritonProcess, str],
                                                       default_client: openai.OpenAI) -> None:
    def ask(i: int) -> tuple[str, str | None]:
        stream = default_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count from 1 to {20 + i}."}], temperature=0,
            max_tokens=24, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert all(text and reason in ("stop", "length") for text, reason in results)
    # The engine's largest running batch (a backend metric) held several sequences at once.
    assert model_metric(default_stack[0], MODEL, "chatllm_max_batch_size") >= 4


def test_client_disconnect_frees_the_slot(default_stack: tuple[TritonProcess, str]) -> None:
    triton, gateway = default_stack
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 4000, "temperature": 0, "stream": True, "ignore_eos": True}
    # 4000 tokens would take minutes; after the disconnect the sequence must leave the batch.
    disconnect_mid_stream(triton, gateway, "/v1/chat/completions", body, "the cancelled generation to leave the batch",
                          timeout_s=20)
    health = httpx.get(f"{gateway}/health", timeout=10)
    assert health.status_code == 200


def test_bad_sampling_value_is_a_400_and_the_server_stays_up(default_stack: tuple[TritonProcess, str],
                                                             default_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        default_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=100000)
    assert "maximum context length" in str(info.value)
    reply = default_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=2)
    assert reply.choices[0].message.content


# ---- the API surface on the real model (logprobs, token counting, context, FastChat) ------


def test_logprobs_of_a_greedy_answer(default_client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    reply = default_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6,
                                                   logprobs=True, top_logprobs=3)
    chunks = list(default_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6,
                                                         logprobs=True, top_logprobs=3, stream=True))

    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        alternatives = [a.logprob for a in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert token.top_logprobs[0].token == token.token  # greedy: the most likely token
        assert token.logprob == pytest.approx(alternatives[0], abs=1e-5) and token.logprob <= 0
        assert token.bytes == list(token.token.encode())
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content or []]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-4)


def test_seed_reproduces_a_sampled_answer_streamed_or_not(default_client: openai.OpenAI) -> None:
    def ask(stream: bool, **sampling: object) -> str:
        kwargs: dict[str, object] = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, **sampling}
        if not stream:
            reply = default_client.completions.create(**kwargs)  # type: ignore[call-overload]
            return reply.choices[0].text  # type: ignore[no-any-return]
        chunks = default_client.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
        return "".join(c.choices[0].text for c in chunks if c.choices)

    sampled = ask(False, temperature=1.0, top_p=0.95, seed=1234)
    assert ask(True, temperature=1.0, top_p=0.95, seed=1234) == sampled
    # top_k 1 leaves only the most likely token: greedy, whatever the temperature.
    assert ask(False, temperature=1.5, seed=7, extra_body={"top_k": 1}) == ask(True, temperature=0)


def test_token_check_counts_like_the_prompt_usage(default_stack: tuple[TritonProcess, str],
                                                  default_client: openai.OpenAI) -> None:
    prompt = "The quick brown fox jumps over the lazy dog."
    usage = default_client.completions.create(model=MODEL, prompt=prompt, max_tokens=1).usage
    body = {"prompts": [{"model": "smollm2", "prompt": prompt, "max_tokens": 100},
                        {"model": MODEL, "prompt": prompt, "max_tokens": 8190}]}

    response = httpx.post(f"{default_stack[1]}/api/v1/token_check", json=body, timeout=30)

    assert usage is not None and usage.prompt_tokens > 5
    assert response.json() == {"prompts": [
        {"fits": True, "tokenCount": usage.prompt_tokens, "contextLength": 8192},
        {"fits": False, "tokenCount": usage.prompt_tokens, "contextLength": 8192}]}


def test_a_prompt_longer_than_the_context_is_a_400_with_the_numbers(default_stack: tuple[TritonProcess, str]) -> None:
    body = {"model": MODEL, "prompt": "hello " * 9000, "max_tokens": 10, "stream": True}

    response = httpx.post(f"{default_stack[1]}/v1/completions", json=body, timeout=60)

    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "8192" in error["message"] and re.search(r"\d+ in the prompt", error["message"])
    assert httpx.get(f"{default_stack[1]}/health", timeout=10).status_code == 200


def test_n_streamed_choices_are_interleaved(default_client: openai.OpenAI) -> None:
    chunks = list(default_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a sentence about the sea."}], n=2,
        temperature=1.0, seed=3, max_tokens=12, stream=True, stream_options={"include_usage": True}))

    order = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert set(order) == {0, 1}
    first_of_1, last_of_0 = order.index(1), len(order) - 1 - order[::-1].index(0)
    assert first_of_1 < last_of_0, f"choice 1 only started after choice 0 ended: {order}"
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason}
    assert set(finishes) == {0, 1} and set(finishes.values()) <= {"stop", "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 24


def test_fastchat_request_with_curl(default_stack: tuple[TritonProcess, str]) -> None:
    """FastChat's example request, but with max_tokens 16: sampled with top_k 3 the answer
    can run to its 2000 tokens, minutes on two CPU cores."""
    body = {"model": "smollm2", "messages": "请用中文回答，你是谁？", "temperature": 0.7, "top_p": 1,
            "top_k": 3, "n": 1, "max_tokens": 16, "stop": ["string"], "stream": True, "user": "someone",
            "repetition_penalty": 1, "frequency_penalty": 0, "presence_penalty": 0}
    done = subprocess.run(
        ["curl", "-sS", "--no-buffer", "--max-time", "60", "-H", "Content-Type: application/json",
         "-d", json.dumps(body, ensure_ascii=False), f"{default_stack[1]}/api/v1/chat/completions"],
        capture_output=True, check=True, timeout=90)

    blocks = done.stdout.decode().split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    choices = [json.loads(b.removeprefix("data: "))["choices"][0] for b in blocks[:-2]]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["delta"]["content"] for c in choices[1:-1]]
    assert len(contents) >= 2 and all(contents)
    assert choices[-1]["delta"] == {} and choices[-1]["finish_reason"] in ("stop", "length")
