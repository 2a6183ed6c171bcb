"""A stale model list is answered at once while one background refresh runs."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import ModelNotFoundError
from gateway.llm_client import ModelCard
from gateway.model_registry import ModelRegistry


class SlowIndex:
    """list_models: the first call answers at once, later ones wait for `release`."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.models = ["echo"]

    async def list_models(self) -> list[ModelCard]:
        self.calls += 1
        if self.calls > 1:
            await self.release.wait()
        return [ModelCard(m, m, 256) for m in self.models]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_known_model_never_waits_for_a_slow_refresh() -> None:
    async def test() -> None:
        index, clock = SlowIndex(), Clock()
        registry = ModelRegistry(index, ttl_s=5.0, clock=clock)  # type: ignore[arg-type]
        assert (await registry.resolve("echo")).triton_model == "echo"
        clock.now = 10.0  # stale
        answers = await asyncio.wait_for(asyncio.gather(*(registry.resolve("echo") for _ in range(50))), 1)
        assert len(answers) == 50
        assert index.calls == 2, "one background refresh for all of them"
        index.models = ["echo", "new"]
        index.release.set()
        await asyncio.sleep(0)  # let the refresh finish
        await asyncio.sleep(0)
        assert (await registry.resolve("new")).id == "new"
        with pytest.raises(ModelNotFoundError):
            await registry.resolve("missing")

    asyncio.run(asyncio.wait_for(test(), 10))
