"""Factory fixtures for real servers; see servers.py."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from .servers import TritonProcess, copy_echo, launch_gateway, launch_triton, openai_client

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = ROOT / "model_repository"


@pytest.fixture(scope="session")
def default_stack() -> Iterator[tuple[TritonProcess, str]]:
    """tritonserver on model_repository/ (SmolLM2 and all-MiniLM-L6-v2) and a gateway in front:
    one for every module that needs the real models, as loading them is the slow part."""
    with launch_triton(DEFAULT_REPOSITORY) as triton, launch_gateway([triton.grpc_url]) as gateway:
        yield triton, gateway


@pytest.fixture(scope="session")
def default_client(default_stack: tuple[TritonProcess, str]) -> openai.OpenAI:
    """The official OpenAI client on `default_stack`'s gateway."""
    return openai_client(default_stack[1])


@pytest.fixture(scope="session")
def echo_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """tritonserver serving only the deterministic echo model (fast to start), shared by the
    modules that test the gateway and the load tests; tests compare metrics before and after."""
    with launch_triton(copy_echo(tmp_path_factory.mktemp("echo_repository"))) as process:
        yield process


@pytest.fixture(scope="session")
def echo_gateway(echo_triton: TritonProcess) -> Iterator[str]:
    with launch_gateway([echo_triton.grpc_url]) as base_url:
        yield base_url


@pytest.fixture
def echo_repository(tmp_path: Path) -> Path:
    """A fresh model repository holding the echo model."""
    return copy_echo(tmp_path)


@pytest.fixture
def servers() -> Iterator[contextlib.ExitStack]:
    """Servers a test enters here are stopped when it ends, the last started first."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def start_triton() -> Iterator[Callable[..., TritonProcess]]:
    with contextlib.ExitStack() as stack:
        yield lambda repo, extra_args=None: stack.enter_context(launch_triton(Path(repo), extra_args))


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., str]]:
    with contextlib.ExitStack() as stack:
        yield lambda urls, api_keys=None: stack.enter_context(launch_gateway(list(urls), api_keys))
