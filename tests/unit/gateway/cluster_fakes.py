"""Fake Triton servers for the router's tests: state lives in `FakeServer`, clients come and go.

The router replaces an endpoint's client when the server is unreachable, as it would with a
real `TritonLLMClient`; closing a `FakeEndpointClient` ends the streams it has in flight, as
closing a gRPC channel does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.dispatch import RoutedLLMClient
from gateway.endpoints import EndpointPool, EndpointTarget, RoutingConfig
from gateway.errors import UpstreamError, upstream_error
from gateway.llm_client import EmbeddingResult, GenerationChunk, GenerationInput, ModelCard

HANG = "hang"
"""Script step: wait until the client is closed or the generation is cancelled."""


def unavailable(message: str = "failed to connect to all addresses") -> UpstreamError:
    return upstream_error(message, "StatusCode.UNAVAILABLE")


def chunk(text: str, finish: str | None = None) -> GenerationChunk:
    return GenerationChunk(text, finish, 1 if finish is None else None, 1)


@dataclass
class FakeServer:
    """One Triton server: is it up, what does it serve, what will it answer."""

    name: str
    models: tuple[str, ...] = ("echo",)
    ready: bool = True
    reachable: bool = True
    scripts: deque[list[object]] = field(default_factory=deque)
    inputs: list[GenerationInput] = field(default_factory=list)
    clients_made: int = 0
    in_flight: int = 0
    unary_calls: int = 0

    def cards(self) -> list[ModelCard]:
        return [ModelCard(m, m, 256) for m in self.models]

    def queue(self, *scripts: list[object]) -> None:
        self.scripts.extend(scripts)


class FakeEndpointClient:
    """An `LLMClient` bound to one `FakeServer`."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        server.clients_made += 1
        self.closed = asyncio.Event()

    def _check(self) -> None:
        if self.closed.is_set():
            raise upstream_error("channel closed", "StatusCode.CANCELLED")
        if not self.server.reachable:
            raise unavailable()

    async def list_models(self) -> list[ModelCard]:
        self._check()
        return self.server.cards()

    async def is_ready(self) -> bool:
        return self.server.reachable and self.server.ready and not self.closed.is_set()

    async def generate(self, inp: GenerationInput) -> AsyncIterator[GenerationChunk]:
        self._check()
        self.server.inputs.append(inp)
        script = self.server.scripts.popleft() if self.server.scripts else [chunk(f"from {self.server.name}", "stop")]
        self.server.in_flight += 1
        try:
            for step in script:
                if isinstance(step, GenerationChunk):
                    yield step
                elif isinstance(step, Exception):
                    raise step
                elif step == HANG:
                    await self.closed.wait()
                    raise upstream_error("Socket closed", "StatusCode.CANCELLED")
                elif isinstance(step, asyncio.Event):
                    await step.wait()
        finally:
            self.server.in_flight -= 1

    async def count_tokens(self, model: str, prompt: str, request_id: str = "") -> int:
        self._check()
        self.server.unary_calls += 1
        return len(prompt.split())

    async def embed(self, model: str, texts: Sequence[str], request_id: str = "") -> EmbeddingResult:
        self._check()
        self.server.unary_calls += 1
        return EmbeddingResult([[float(len(t))] for t in texts], len(texts))

    async def close(self) -> None:
        self.closed.set()


class FakeCluster:
    """Servers by address, and the client factory the router uses."""

    def __init__(self, *servers: FakeServer) -> None:
        self.servers = {s.name: s for s in servers}
        self.clients: list[FakeEndpointClient] = []

    def factory(self, address: str) -> FakeEndpointClient:
        client = FakeEndpointClient(self.servers[address])
        self.clients.append(client)
        return client


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- helpers of the router tests ----------------------------------------------------

DEADLINE_S = 5.0
# A long interval: rounds then happen only when a test calls refresh() or a failure wakes them.
QUIET = RoutingConfig(health_interval_s=60.0, probe_timeout_s=1.0, dead_after_s=10.0)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def router(
    cluster: FakeCluster, config: RoutingConfig = QUIET, **kwargs: Any
) -> RoutedLLMClient:
    targets = [EndpointTarget(name) for name in cluster.servers]
    return RoutedLLMClient(EndpointPool(targets, cluster.factory, config, **kwargs))


def inp(model: str = "echo", request_id: str = "req") -> GenerationInput:
    return GenerationInput(model=model, prompt="hi", request_id=request_id)


async def collect(stream: AsyncIterator[GenerationChunk]) -> str:
    return "".join([c.text async for c in stream])


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval


def ready_names(client: RoutedLLMClient) -> list[str]:
    return [e.address for e in client.pool.endpoints() if e.ready]
