"""The tree passes ruff and mypy with the settings in pyproject.toml.

mypy checks each target in a run of its own (one case each, so a failure names the package):
the Triton models are all called `model.py` and cannot share one run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What mypy checks; pyproject.toml says how strictly (strict: chatllm_engine, chatllm_wire, gateway).
MYPY_TARGETS = [
    "backends/chatllm/chatllm_engine",
    "backends/chatllm/model.py",
    "chatllm_wire",
    "model_repository/all-minilm-l6-v2/1/model.py",
    "tests/model_repository/echo/1/model.py",
    "gateway",
    "tritonchat",
    "loadtest",
]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_passes() -> None:
    result = _run("ruff", "check", "--no-cache", "--output-format", "concise", ".")

    assert result.returncode == 0, f"ruff check .:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("target", MYPY_TARGETS)
def test_mypy_passes(target: str) -> None:
    result = _run("mypy", target)

    assert result.returncode == 0, f"mypy {target}:\n{result.stdout}{result.stderr}"
