"""The integration tests' server launchers (shared with `tritonchat serve` and the benchmark),
and an OpenAI client for a gateway."""

from typing import Any

import openai

from tritonchat.launch import TritonProcess, free_port, launch_gateway, launch_triton

__all__ = ["TritonProcess", "free_port", "launch_gateway", "launch_triton", "openai_client"]


def openai_client(gateway: str, **options: Any) -> openai.OpenAI:
    """The official client on `gateway`'s `/v1`, without retries (a test sees the first answer)."""
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, **options)
