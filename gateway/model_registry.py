"""A short-lived cache of the served model names, shared by all routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.errors import ModelNotFoundError
from gateway.llm_client import LLMClient, ModelCard

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Answers "which models exist" from a list refreshed at most every `ttl_s` seconds.

    Every generation request checks its model here, so an unknown name is a 404 before
    any generation starts, without asking Triton each time. Once a list is known, a stale
    one is still answered at once while a single background task refreshes it: a request
    for a known model never waits on Triton's control plane, which answers slowly exactly
    when the server is busiest (a burst would otherwise queue every request, refusals
    included, behind it). An unknown name under a stale list asks again before the 404.
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
        self._background: asyncio.Task[list[ModelCard]] | None = None

    async def cards(self) -> list[ModelCard]:
        """All served names (raises `UpstreamError` when Triton cannot be asked)."""
        if self._fresh():
            return list(self._cards)
        if self._fetched_at is not None:
            self._refresh_in_background()
            return list(self._cards)
        return await self._refresh()

    async def resolve(self, name: str) -> ModelCard:
        """The card for `name`; raises `ModelNotFoundError` when it is not served."""
        cards = await self.cards()
        if not self._fresh() and not any(card.id == name for card in cards):
            cards = await self._refresh()  # perhaps loaded since: ask before the 404
        for card in cards:
            if card.id == name:
                return card
        raise ModelNotFoundError(name)

    async def _refresh(self) -> list[ModelCard]:
        async with self._lock:
            if not self._fresh():
                self._cards = await self._client.list_models()
                self._fetched_at = self._clock()
            return list(self._cards)

    def _refresh_in_background(self) -> None:
        if self._background is not None and not self._background.done():
            return
        self._background = asyncio.ensure_future(self._refresh())
        self._background.add_done_callback(_log_failure)

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl_s


def _log_failure(task: asyncio.Task[list[ModelCard]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("refreshing the model list failed (the last one is kept): %s", task.exception())
