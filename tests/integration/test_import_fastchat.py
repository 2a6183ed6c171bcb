"""A folder written by `tritonchat import-fastchat` from a CPU model_worker command line is
loaded by a real tritonserver and answers through the gateway (a tiny random-weight Llama
saved as a Hugging Face folder, so nothing is downloaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.servers import launch_gateway, launch_triton
from tests.unit.engine.conftest import build_model, build_tokenizer

pytestmark = pytest.mark.integration


def test_imported_cpu_worker_loads_and_answers(tmp_path: Path) -> None:
    weights = tmp_path / "tiny-llama"
    tokenizer = build_tokenizer()
    build_model(len(tokenizer)).save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    repository = tmp_path / "repository"
    subprocess.run(
        [sys.executable, "-m", "tritonchat.cli", "import-fastchat", "--model-repository",
         str(repository), "--", "python3", "-m", "fastchat.serve.model_worker", "--model-path",
         str(weights), "--device", "cpu", "--model-names", "tiny,tiny-alias",
         "--limit-worker-concurrency", "4", "--stream-interval", "2", "--dtype", "float32",
         "--port", "31000"],
        check=True, timeout=120)

    with launch_triton(repository) as triton, launch_gateway([triton.grpc_url]) as gateway:
        models = httpx.get(f"{gateway}/v1/models", timeout=30).json()
        assert {m["id"] for m in models["data"]} == {"tiny", "tiny-alias"}
        response = httpx.post(f"{gateway}/v1/chat/completions", timeout=120, json={
            "model": "tiny-alias", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Hello world"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["finish_reason"] in ("length", "stop")
        assert 1 <= body["usage"]["completion_tokens"] <= 4
