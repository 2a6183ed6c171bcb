"""The integration tests' server launchers (shared with `tritonchat serve` and the benchmark),
the echo test model, and an OpenAI client for a gateway."""

import shutil
from pathlib import Path
from typing import Any

import openai

from tritonchat.launch import TritonProcess, free_port, launch_gateway, launch_triton

__all__ = ["ECHO_MODEL", "TritonProcess", "copy_echo", "free_port", "launch_gateway", "launch_triton",
           "openai_client"]

ECHO_MODEL = Path(__file__).resolve().parents[1] / "model_repository" / "echo"
"""The deterministic echo model (fast to load): answers with the user's words."""


def copy_echo(repository: Path, *names: str) -> Path:
    """`repository` holding a copy of the echo model under each of `names` (default "echo")."""
    for name in names or ("echo",):
        shutil.copytree(ECHO_MODEL, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    return repository


def openai_client(gateway: str, **options: Any) -> openai.OpenAI:
    """The official client on `gateway`'s `/v1`, without retries (a test sees the first answer)."""
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, **options)
