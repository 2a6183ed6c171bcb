"""What the generation routes share: app state, request-to-input mapping, the response path."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

import chatllm_wire as wire
from chatllm_wire import StructuredOutput
from gateway import sse
from gateway.disconnect import race_disconnect
from gateway.errors import InvalidRequestError, UpstreamError
from gateway.generation import ChoiceDelta, UsageCounter, merge, stream_choice
from gateway.llm_client import GenerationInput, LLMClient, ModelCard, ModelKind, SamplingParams, TokenLogprob
from gateway.model_registry import ModelRegistry
from gateway.protocol import UsageInfo
from gateway.settings import GatewaySettings

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


def start_request(request: Request, prefix: str) -> str:
    """A new request id, kept on the request for the error handlers' log lines."""
    request_id = new_request_id(prefix)
    request.state.request_id = request_id
    return request_id


async def resolve_model(request: Request, name: str, kind: ModelKind) -> ModelCard:
    """The card of a served name; 404 when unknown, 400 when it serves something else."""
    return check_kind(await get_state(request).registry.resolve(name), kind)


def check_kind(card: ModelCard, kind: ModelKind) -> ModelCard:
    """`card`, or a 400 when it serves something other than `kind`."""
    if card.kind == kind:
        return card
    if card.kind == "embed":
        message = f"`{card.id}` is an embedding model: use /v1/embeddings"
    else:
        message = f"`{card.id}` is not an embedding model"
    raise InvalidRequestError(message, param="model")


_INPUT_REFUSALS = {
    wire.RETURN_LOGPROBS: ("logprobs", "model `{model}` does not return logprobs"),
    wire.TOOLS: (wire.TOOLS, "model `{model}` does not take tools"),
    wire.CHAT_TEMPLATE_KWARGS: (wire.CHAT_TEMPLATE_KWARGS, "model `{model}` does not take chat_template_kwargs"),
    wire.COUNT_TOKENS_ONLY: ("model", "model `{model}` cannot count tokens"),
}
"""Optional input -> (the request field to blame, the message) when a model lacks it."""


def check_inputs(card: ModelCard, *needed: str | None) -> None:
    """A 400 naming the field when the model does not take one of the `needed` inputs
    (chatllm_wire names; None entries are skipped, for inputs a request does not use)."""
    for name in needed:
        if name is not None and not card.takes(name):
            param, message = _INPUT_REFUSALS[name]
            raise InvalidRequestError(message.format(model=card.triton_model), param=param)


class SamplingFields(Protocol):
    """The sampling fields OpenAI's requests (`SamplingRequest`) and FastChat's worker requests
    (`WorkerGenerateParams`) share."""

    temperature: float | None
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    seed: int | None

    def stop_strings(self) -> tuple[str, ...]: ...


def sampling_params(
    body: SamplingFields,
    max_tokens: int | None,
    logprobs: int | None = None,
    structured: StructuredOutput | None = None,
    *,
    ignore_eos: bool = False,
    stop_token_ids: tuple[int, ...] = (),
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
        ignore_eos=ignore_eos,
        logprobs=logprobs,
        structured_outputs=structured,
        stop_token_ids=stop_token_ids,
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


def usage_info(usage: UsageCounter) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


@dataclass
class CollectedChoice:
    """One choice of a non-streaming answer, read to its end."""

    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob]


async def collect_choices(
    events: AsyncIterator[ChoiceDelta], count: int, prefixes: Sequence[str] = ()
) -> list[CollectedChoice]:
    """Every choice's text (after its prefix, e.g. an echoed prompt), finish reason and tokens."""
    texts: list[list[str]] = [[prefixes[i]] if prefixes else [] for i in range(count)]
    reasons: list[str | None] = [None] * count
    tokens: list[list[TokenLogprob]] = [[] for _ in range(count)]
    async for delta in events:
        texts[delta.index].append(delta.text)
        tokens[delta.index].extend(delta.logprobs)
        if delta.finish_reason is not None:
            reasons[delta.index] = delta.finish_reason
    return [CollectedChoice("".join(texts[i]), reasons[i], tokens[i]) for i in range(count)]


async def respond(
    request: Request,
    request_id: str,
    stream: bool,
    prompts: Sequence[Sequence[GenerationInput]],
    chunks: Callable[[AsyncGenerator[ChoiceDelta, None], UsageCounter], AsyncGenerator[BaseModel, None]],
    collect: Callable[[AsyncIterator[ChoiceDelta], UsageCounter], Awaitable[BaseModel]],
) -> Response:
    """Run the generations of one request and answer it.

    `prompts` holds the choices of each prompt (a prompt's tokens count once in the usage);
    choice `i` is the `i`-th input over all of them. The answer is an event stream of
    `chunks(deltas, usage)` (a 200 only once the first delta is there), or the JSON body
    `collect(deltas, usage)` makes.
    """
    client = get_state(request).client
    usage = UsageCounter()
    inputs = [(group, inp) for group, choices in enumerate(prompts) for inp in choices]
    events = merge(
        [stream_choice(client, i, inp, usage, prompt_group=group) for i, (group, inp) in enumerate(inputs)]
    )
    if stream:
        first = await first_delta(request, events)
        generation = prepend(first, events)
        return sse.response(sse.events(chunks(generation, usage), request_id, generation))
    result = await race_disconnect(request, collect(events, usage))
    return JSONResponse(result.model_dump())
