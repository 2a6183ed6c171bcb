"""Several Triton servers behind one gateway: `RoutedLLMClient`.

The router holds an `EndpointPool` (one `LLMClient` per Triton endpoint, with its health;
`gateway.endpoints`) and is itself an `LLMClient`, so the HTTP layer does not know how many
servers there are. This module is what happens to one request:

- Choice: among the ready endpoints that serve the model, the least loaded (requests this
  gateway has outstanding there, plus the requests queued in Triton when its metrics are
  scraped); ties go to the endpoint picked least recently, so a steady stream of
  one-at-a-time requests alternates.
- Capacity: being full is not being down. A model whose config says how many requests one
  server takes (`ModelCard.capacity`) gets no more than that from this gateway per
  endpoint; when every ready endpoint is full the request is refused at once (429 with
  Retry-After) instead of queueing behind running work. A server that answers "at
  capacity" itself (429) stays in routing; the request is tried on another one.
- Failover: a generation that fails before its first chunk was yielded is retried on
  another endpoint (503, 429 and an unknown model are retried; a refused request is not).
  A non-streaming generation (`GenerationInput.replayable`) is held until complete, so a
  server-side failure (503) even mid-generation runs it again elsewhere. A stream cannot be
  retried after its first chunk: the error reaches the client as an error event after the
  text already sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.endpoints import Endpoint, EndpointPool
from gateway.errors import UpstreamError, status_error
from gateway.llm_client import (
    EmbeddingResult,
    GenerationChunk,
    GenerationInput,
    LLMClient,
    ModelCard,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _retryable(error: UpstreamError) -> bool:
    """Worth another endpoint: unavailable, overloaded, or the model is not there."""
    return error.status_code in (429, 503) or error.code == "model_not_found"


class RoutedLLMClient:
    """An `LLMClient` that spreads requests over the endpoints of its `pool`.

    Every method starts the pool first, so the first request (or `/health` poll) starts
    it inside the serving event loop. `close()` closes the pool.
    """

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self._picks = 0

    async def close(self) -> None:
        await self.pool.close()

    # ---- choice ----------------------------------------------------------------------

    def _pick(self, model: str, tried: set[str]) -> Endpoint:
        candidates = self.pool.serving(model, tried)
        if not candidates:
            if not self.pool.ready():
                raise status_error("UNAVAILABLE", "no Triton server is ready")
            raise status_error("UNAVAILABLE", f"no ready Triton server serves model `{model}`")
        candidates = [e for e in candidates if e.has_room(model)]
        if not candidates:
            raise status_error(
                "RESOURCE_EXHAUSTED", f"every server of model `{model}` is at capacity; retry later"
            )
        best = min(candidates, key=lambda e: (e.load(model), e.last_pick))
        self._picks += 1
        best.last_pick = self._picks
        best.requests_total += 1
        return best

    async def _unary(
        self, model: str, request_id: str, call: Callable[[LLMClient], Awaitable[T]]
    ) -> T:
        """Run an idempotent call on the best endpoint, retrying elsewhere when allowed."""
        await self.pool.start()
        tried: set[str] = set()
        while True:
            endpoint = self._pick(model, tried)
            tried.add(endpoint.address)
            endpoint.acquire(model)
            try:
                return await call(endpoint.client)
            except UpstreamError as error:
                self.pool.record_failure(endpoint, model, error)
                if not self._may_retry(model, error, tried, request_id, endpoint):
                    raise
            finally:
                endpoint.release(model)

    def _may_retry(
        self,
        model: str,
        error: UpstreamError,
        tried: set[str],
        request_id: str,
        endpoint: Endpoint,
    ) -> bool:
        if not _retryable(error) or len(tried) >= self.pool.config.max_attempts:
            return False
        if not any(e.has_room(model) for e in self.pool.serving(model, tried)):
            return False  # nobody else to ask: the client gets this error
        logger.info(
            "request %s: %s failed before any output reached the client (%d %s); "
            "trying another server",
            request_id,
            endpoint.address,
            error.status_code,
            error.message,
        )
        return True

    # ---- LLMClient -------------------------------------------------------------------

    async def list_models(self) -> list[ModelCard]:
        """The union of the ready endpoints' models, read fresh from each of them."""
        await self.pool.start()
        ready = self.pool.ready()
        if not ready:
            raise status_error("UNAVAILABLE", "no Triton server is ready")
        timeout = self.pool.config.probe_timeout_s
        results = await asyncio.gather(
            *(asyncio.wait_for(e.client.list_models(), timeout) for e in ready),
            return_exceptions=True,
        )
        now = self.pool.clock()
        cards: dict[str, ModelCard] = {}
        answered = 0
        for endpoint, result in zip(ready, results):
            if isinstance(result, BaseException):
                logger.warning("endpoint %s: cannot list models: %s", endpoint.address, result)
                if isinstance(result, UpstreamError) and result.status_code == 503:
                    self.pool.set_ready(endpoint, False, f"listing models failed: {result.message}")
                    self.pool.probe_soon()
                continue
            answered += 1
            endpoint.set_cards(result, now)
            for card in result:
                known = cards.setdefault(card.id, card)
                if known.triton_model != card.triton_model:
                    logger.warning(
                        "name %s means model %s on one server and %s on %s; using %s",
                        card.id,
                        known.triton_model,
                        card.triton_model,
                        endpoint.address,
                        known.triton_model,
                    )
        if not answered:
            raise status_error("UNAVAILABLE", "no Triton server answered the model list")
        return list(cards.values())

    async def generate(self, inp: GenerationInput) -> AsyncIterator[GenerationChunk]:
        """Stream from the least-loaded endpoint; retried elsewhere before the first chunk
        (a `replayable` input: until it is complete, its chunks held back till then).
        Closing this iterator closes (and so cancels) the upstream stream."""
        await self.pool.start()
        tried: set[str] = set()
        while True:
            endpoint = self._pick(inp.model, tried)
            tried.add(endpoint.address)
            endpoint.acquire(inp.model)
            stream = endpoint.client.generate(inp)
            yielded = False
            held: list[GenerationChunk] = []
            try:
                async for chunk in stream:
                    if inp.replayable:
                        held.append(chunk)
                        continue
                    yielded = True
                    yield chunk
                if not inp.replayable:
                    return
            except UpstreamError as error:
                self.pool.record_failure(endpoint, inp.model, error)
                if yielded or (held and not error.server_side):
                    raise _mid_stream_error(error, inp.request_id, endpoint) from None
                if not self._may_retry(inp.model, error, tried, inp.request_id, endpoint):
                    if held:
                        raise _mid_stream_error(error, inp.request_id, endpoint) from None
                    raise
                continue
            finally:
                endpoint.release(inp.model)
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            for chunk in held:  # replayable and complete: now the client may see it
                yield chunk
            return

    async def count_tokens(self, model: str, prompt: str, request_id: str = "") -> int:
        return await self._unary(
            model, request_id, lambda client: client.count_tokens(model, prompt, request_id)
        )

    async def embed(
        self, model: str, texts: Sequence[str], request_id: str = ""
    ) -> EmbeddingResult:
        return await self._unary(
            model, request_id, lambda client: client.embed(model, texts, request_id)
        )

    async def is_ready(self) -> bool:
        """True while at least one endpoint is ready."""
        await self.pool.start()
        return bool(self.pool.ready())


def _mid_stream_error(error: UpstreamError, request_id: str, endpoint: Endpoint) -> UpstreamError:
    logger.warning(
        "request %s: %s failed mid-stream (%d %s)",
        request_id,
        endpoint.address,
        error.status_code,
        error.message,
    )
    if error.status_code != 503:
        return error  # the model's own error: its message says what happened
    return UpstreamError(
        503,
        "the inference server failed during the generation; the answer is incomplete "
        f"({error.message})",
        error.err_type,
        code=error.code,
        retry_after_s=error.retry_after_s,
    )
