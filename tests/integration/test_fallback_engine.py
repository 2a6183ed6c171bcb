"""A seq2seq model through Triton: the chatllm backend sees that our batching engine cannot
take it and serves it per request (the fallback), with streaming and cancellation.

The model is a tiny random-weight T5 saved by the test, with the unit tests' tokenizer.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from tests.unit.engine.conftest import build_tokenizer

from .metrics import disconnect_mid_stream, model_metric
from .servers import TritonProcess, launch_gateway, launch_triton

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-t5"


def _config(model_dir: Path) -> str:
    config = (ROOT / "model_repository" / "smollm2-135m-instruct" / "config.pbtxt").read_text()
    parameters = (
        'parameters [\n'
        f'  {{ key: "model_path", value: {{ string_value: "{model_dir}" }} }},\n'
        '  { key: "dtype", value: { string_value: "float32" } },\n'
        '  { key: "max_model_len", value: { string_value: "100000" } },\n'
        '  { key: "fallback_concurrency", value: { string_value: "2" } },\n'
        '  { key: "cpu_threads", value: { string_value: "1" } }\n'
        ']\n')
    return config[:config.index("parameters [")] + parameters


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonProcess, str]]:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, eos_token_id=2, pad_token_id=0))
    weights = tmp_path_factory.mktemp("tiny_t5")
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    repository = tmp_path_factory.mktemp("fallback_repository")
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "config.pbtxt").write_text(_config(weights))
    try:
        with launch_triton(repository) as triton, launch_gateway([triton.grpc_url]) as gateway:
            yield triton, gateway
    finally:
        shutil.rmtree(weights, ignore_errors=True)


def test_a_seq2seq_model_is_served_by_the_fallback(stack: tuple[TritonProcess, str]) -> None:
    assert model_metric(stack[0], MODEL, "chatllm_engine_info", engine="fallback") == 1
    assert "cannot take this model" in stack[0].log_path.read_text(errors="replace")
    # configured without `engine`: the model list says what was chosen on load
    models = httpx.get(f"{stack[1]}/v1/models", timeout=30).json()["data"]
    assert [(m["id"], m["engine"]) for m in models] == [(MODEL, "fallback")]
    assert httpx.get(f"{stack[1]}/v1/models/{MODEL}", timeout=30).json()["engine"] == "fallback"


def test_streams_chat_and_completions(stack: tuple[TritonProcess, str]) -> None:
    gateway = stack[1]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello world"}], "max_tokens": 8,
            "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        data = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert sum('"content"' in line for line in data) >= 2 and '"finish_reason":"length"' in "".join(data)
    reply = httpx.post(f"{gateway}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": "The capital of Italy is", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 5


def test_client_disconnect_cancels_the_generation(stack: tuple[TritonProcess, str]) -> None:
    triton, gateway = stack
    body = {"model": MODEL, "prompt": "Hello world", "max_tokens": 90000, "temperature": 0, "stream": True,
            "ignore_eos": True}
    disconnect_mid_stream(triton, gateway, "/v1/completions", body, "the cancelled generation to leave the batch",
                          timeout_s=30)
