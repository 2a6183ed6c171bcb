"""Shared by the probes: where the repository is, and the default model loaded as the backend does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
sys.path.insert(0, str(ROOT / "backends" / "chatllm"))


def load_default_model(**overrides: Any) -> tuple[Any, Any]:
    """The model as the backend loads it; `overrides` replace EngineConfig fields."""
    import dataclasses

    from chatllm_engine.config import EngineConfig
    from chatllm_engine.loader import load_model
    from loadtest.layouts import model_parameters

    params = model_parameters(ROOT / "model_repository" / MODEL / "config.pbtxt")
    return load_model(dataclasses.replace(EngineConfig.from_parameters(params), **overrides))


def chat_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """The benchmark's chat prompts as token ids."""
    from loadtest.bench import chat_messages

    return [tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False).input_ids for m in chat_messages(count)]
