"""Triton servers that join at run time, like FastChat's workers.

A server (or a sidecar next to it: `tritonchat register`, `tritonchat serve --register-with`)
posts `/register_triton` with its gRPC address every `heartbeat_interval_s`. The first beat
adds it to the gateway's endpoint pool, which probes it at once and routes to it as soon as
it is ready; when no beat arrived for `EXPIRY_INTERVALS` intervals it is taken out (its
in-flight requests finish; new ones go elsewhere). A clean shutdown unregisters at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

EXPIRY_INTERVALS = 1.5
"""A server is dropped after this many intervals without a beat: one lost beat is
tolerated, and with the sweep below it is gone within two intervals of its last beat."""
SWEEPS_PER_INTERVAL = 4


class PoolMembership(Protocol):
    """What the registry needs from the endpoint pool (`gateway.endpoints.EndpointPool`)."""

    async def add_endpoint(self, address: str) -> None: ...

    async def remove_endpoint(self, address: str) -> None: ...


@dataclass
class _Registration:
    interval_s: float
    last_beat: float


class TritonRegistry:
    """Registered Triton servers and their beats; owns the expiry task (event loop only)."""

    def __init__(self, pool: PoolMembership, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._clock = clock
        self._servers: dict[str, _Registration] = {}
        self._task: asyncio.Task[None] | None = None

    async def beat(self, address: str, interval_s: float) -> bool:
        """Register or refresh `address`; True when it is new (now added to the pool)."""
        known = self._servers.get(address)
        if known is not None:
            known.interval_s, known.last_beat = interval_s, self._clock()
            return False
        await self._pool.add_endpoint(address)  # raises ValueError for a bad address
        self._servers[address] = _Registration(interval_s, self._clock())
        logger.info("Triton server %s registered (beats every %.1fs)", address, interval_s)
        self._ensure_task()
        return True

    async def unregister(self, address: str) -> bool:
        if self._servers.pop(address, None) is None:
            return False
        logger.info("Triton server %s unregistered", address)
        await self._pool.remove_endpoint(address)
        return True

    async def expire(self) -> list[str]:
        """Drop every server whose beats stopped; returns their addresses."""
        now = self._clock()
        gone = [
            address
            for address, reg in self._servers.items()
            if now - reg.last_beat > EXPIRY_INTERVALS * reg.interval_s
        ]
        for address in gone:
            logger.warning("Triton server %s stopped beating; taken out of routing", address)
            del self._servers[address]
            await self._pool.remove_endpoint(address)
        return gone

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="triton-registry-expiry")

    async def _run(self) -> None:
        while self._servers:
            shortest = min(reg.interval_s for reg in self._servers.values())
            await asyncio.sleep(shortest / SWEEPS_PER_INTERVAL)
            try:
                await self.expire()
            except Exception:  # one bad sweep must not end expiry
                logger.exception("Triton registry sweep failed")
