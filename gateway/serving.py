"""What the generation routes share: app state, request-to-input mapping, streaming."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from chatllm_wire import StructuredOutput
from fastapi import Request
from pydantic import BaseModel

from gateway import sse
from gateway.errors import GatewayError, InvalidRequestError, UpstreamError
from gateway.generation import ChoiceDelta, UsageCounter
from gateway.llm_client import LLMClient, ModelCard, ModelKind, SamplingParams
from gateway.model_registry import ModelRegistry
from gateway.protocol import SamplingRequest, UsageInfo
from gateway.settings import GatewaySettings
from gateway.streaming import race_disconnect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayState:
    """Everything routes need; lives on `app.state.gateway` (no module globals)."""

    settings: GatewaySettings
    client: LLMClient
    registry: ModelRegistry
    created: int
    """Unix time the app was built; the `created` of every model entry."""


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def resolve_model(request: Request, name: str, kind: ModelKind) -> ModelCard:
    """The card of a served name; 404 when unknown, 400 when it serves something else."""
    card = await get_state(request).registry.resolve(name)
    if card.kind != kind:
        if card.kind == "embed":
            message = f"`{name}` is an embedding model: use /v1/embeddings"
        else:
            message = f"`{name}` is not an embedding model"
        raise InvalidRequestError(message, param="model")
    return card


def sampling_params(
    body: SamplingRequest,
    max_tokens: int | None,
    logprobs: int | None = None,
    structured: StructuredOutput | None = None,
) -> SamplingParams:
    """The request's sampling fields; `top_k` of -1 or 0 means disabled (left out).

    `logprobs`: None for none, else how many of the most likely tokens to report.
    `structured`: the constraint the output must match (gateway/structured.py, tools.py).
    """
    top_k = body.top_k if body.top_k is not None and body.top_k > 0 else None
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=top_k,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=body.seed,
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        structured_outputs=structured,
    )


def for_choice(sampling: SamplingParams, choice: int) -> SamplingParams:
    """Choice `i` of `n` uses seed + i, so the choices differ but stay reproducible."""
    if sampling.seed is None or choice == 0:
        return sampling
    return dataclasses.replace(sampling, seed=sampling.seed + choice)


async def first_delta(
    request: Request, events: AsyncGenerator[ChoiceDelta, None]
) -> ChoiceDelta:
    """Wait for the first delta before answering 200.

    An error the model raises before producing anything (a refused prompt, an overloaded
    server) then becomes a proper HTTP status instead of an error event after a 200.
    """
    first = await race_disconnect(request, anext(events, None))
    if first is None:
        raise UpstreamError(500, "the generation produced nothing", "server_error")
    return first


async def prepend(
    first: ChoiceDelta, rest: AsyncGenerator[ChoiceDelta, None]
) -> AsyncGenerator[ChoiceDelta, None]:
    """`first`, then the rest; closing this closes `rest` (cancelling its generations)."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


def error_event(exc: Exception, request_id: str) -> dict[str, object]:
    """The payload of the error event sent when a stream fails after its 200."""
    if isinstance(exc, GatewayError):
        logger.warning("request %s failed mid-stream: %s", request_id, exc.message)
        return exc.to_dict()
    logger.exception("request %s failed mid-stream", request_id, exc_info=exc)
    return GatewayError(500, "internal error", "server_error").to_dict()


async def sse_events(
    chunks: AsyncGenerator[BaseModel, None],
    request_id: str,
    generation: AsyncGenerator[ChoiceDelta, None],
) -> AsyncIterator[str]:
    """`chunks` (made from `generation`) as SSE events, then `[DONE]`. A failure after the 200
    becomes one error event; both are closed in any case, which cancels what is still
    running upstream when the client went away."""
    try:
        async for chunk in chunks:
            yield sse.event(chunk)
    except Exception as exc:  # after the 200: report in-band, then end the stream
        yield sse.event(error_event(exc, request_id))
    finally:
        await chunks.aclose()
        await generation.aclose()
    yield sse.DONE


def usage_info(usage: UsageCounter) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
