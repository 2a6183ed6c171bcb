"""`tritonchat bench`'s ceiling and engine modes do the same work, on a tiny random model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from chatllm_engine.config import EngineConfig
from tests.unit.engine.conftest import build_model, build_tokenizer
from loadtest import bench


def test_ceiling_and_engine_generate_exactly_the_asked_tokens_per_request() -> None:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    config = EngineConfig.from_parameters({"model_path": "in-memory", "max_num_batched_tokens": "40"})
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=1) as torch_thread:
            ceiling = torch_thread.submit(bench.run_ceiling, model, tokenizer, 5, 7).result()
            engine = bench.run_engine(model, tokenizer, config, 5, 7, torch_thread)
    finally:
        torch.set_num_threads(previous)

    assert ceiling.output_tokens == engine.output_tokens == 5 * 7
    assert len(engine.ttft_s) == 5 and all(t > 0 for t in engine.ttft_s)
    assert len(engine.itl_s) == 5 * 6  # one gap per token after the first
    assert engine.summary()["tokens_per_s"] > 0
