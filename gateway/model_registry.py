"""A short-lived cache of the served model names, shared by all routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.errors import ModelNotFoundError
from gateway.llm_client import LLMClient, ModelCard


class ModelRegistry:
    """Answers "which models exist" from a list refreshed at most every `ttl_s` seconds.

    Every generation request checks its model here, so an unknown name is a 404 before
    any generation starts, without asking Triton each time.
    """

    def __init__(
        self,
        client: LLMClient,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._clock = clock
        self._cards: list[ModelCard] = []
        self._fetched_at: float | None = None
        # Owner: the event loop; serialises refreshes so concurrent misses ask Triton once.
        self._lock = asyncio.Lock()

    async def list(self) -> list[ModelCard]:
        """All served names (raises `UpstreamError` when Triton cannot be asked)."""
        if self._fresh():
            return list(self._cards)
        async with self._lock:
            if not self._fresh():
                self._cards = await self._client.list_models()
                self._fetched_at = self._clock()
            return list(self._cards)

    async def resolve(self, name: str) -> ModelCard:
        """The card for `name`; raises `ModelNotFoundError` when it is not served."""
        for card in await self.list():
            if card.id == name:
                return card
        raise ModelNotFoundError(name)

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl_s
