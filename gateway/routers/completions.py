"""`POST /v1/completions`: one or several prompts, `n` choices each, optional `echo`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

import chatllm_wire as wire
from gateway.errors import InvalidRequestError
from gateway.generation import ChoiceDelta, UsageCounter
from gateway.llm_client import GenerationInput, TokenLogprob
from gateway.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from gateway.serving import (
    check_inputs,
    collect_choices,
    for_choice,
    resolve_model,
    respond,
    sampling_params,
    start_request,
    usage_info,
)
from gateway.structured import requested_structure

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    request_id = start_request(request, "cmpl")
    if body.logprobs is not None and body.echo:
        raise InvalidRequestError(
            "echo with logprobs (the prompt's logprobs) is not supported", param="echo"
        )
    if body.suffix:
        raise InvalidRequestError("suffix is not supported", param="suffix")
    card = await resolve_model(request, body.model, "generate")
    check_inputs(card, wire.RETURN_LOGPROBS if body.logprobs is not None else None)
    prompts = body.prompts()
    sampling = sampling_params(
        body, body.max_tokens, body.logprobs, requested_structure(body), ignore_eos=body.ignore_eos
    )
    # Choice index = prompt index * n + choice within that prompt, as OpenAI numbers them.
    choices = [
        [
            GenerationInput(
                model=card.triton_model,
                prompt=prompt,
                sampling=for_choice(sampling, j),
                request_id=f"{request_id}-{p * body.n + j}",
                replayable=not body.stream,
            )
            for j in range(body.n)
        ]
        for p, prompt in enumerate(prompts)
    ]
    logger.info(
        "request %s: completion on %s, %d prompt(s), n=%d",
        request_id,
        card.triton_model,
        len(prompts),
        body.n,
    )
    return await respond(
        request,
        request_id,
        body.stream,
        choices,
        lambda deltas, usage: _chunks(body, request_id, deltas, usage),
        lambda deltas, usage: _collect(body, request_id, deltas, usage),
    )


def _echo_text(body: CompletionRequest, index: int) -> str:
    return body.prompts()[index // body.n] if body.echo else ""


def completion_logprobs(
    tokens: Sequence[TokenLogprob], top: int, offset: int = 0
) -> CompletionLogprobs:
    """The legacy shape; `offset` is where the first token starts in the choice's text."""
    result = CompletionLogprobs()
    for t in tokens:
        result.text_offset.append(offset)
        result.tokens.append(t.token)
        result.token_logprobs.append(t.logprob)
        result.top_logprobs.append({a.token: a.logprob for a in t.top[:top]})
        offset += len(t.token)
    return result


async def _collect(
    body: CompletionRequest,
    request_id: str,
    events: AsyncIterator[ChoiceDelta],
    usage: UsageCounter,
) -> CompletionResponse:
    count = len(body.prompts()) * body.n
    collected = await collect_choices(events, count, [_echo_text(body, i) for i in range(count)])
    return CompletionResponse(
        id=request_id,
        model=body.model,
        choices=[
            CompletionChoice(
                index=i,
                text=choice.text,
                logprobs=(
                    None if body.logprobs is None else completion_logprobs(choice.logprobs, body.logprobs)
                ),
                finish_reason=choice.finish_reason,
            )
            for i, choice in enumerate(collected)
        ],
        usage=usage_info(usage),
    )


async def _chunks(
    body: CompletionRequest,
    request_id: str,
    events: AsyncGenerator[ChoiceDelta, None],
    usage: UsageCounter,
) -> AsyncGenerator[CompletionChunk, None]:
    """Echoed prompts first (when asked), text chunks as they come, a finish chunk per
    choice, the usage chunk when asked for."""
    created = int(time.time())
    offsets = [0] * (len(body.prompts()) * body.n)  # where each choice's next token starts

    def chunk(
        index: int,
        text: str,
        finish_reason: str | None = None,
        logprobs: CompletionLogprobs | None = None,
    ) -> CompletionChunk:
        choice = CompletionChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=finish_reason
        )
        return CompletionChunk(id=request_id, created=created, model=body.model, choices=[choice])

    if body.echo:
        for i in range(len(body.prompts()) * body.n):
            yield chunk(i, _echo_text(body, i))
    async for delta in events:
        if body.logprobs is not None and delta.logprobs:
            logprobs = completion_logprobs(delta.logprobs, body.logprobs, offsets[delta.index])
            offsets[delta.index] += sum(len(t.token) for t in delta.logprobs)
            yield chunk(delta.index, delta.text, logprobs=logprobs)
        elif delta.text:
            yield chunk(delta.index, delta.text)
        if delta.finish_reason is not None:
            yield chunk(delta.index, "", delta.finish_reason)
    if body.include_usage():
        yield CompletionChunk(
            id=request_id, created=created, model=body.model, choices=[], usage=usage_info(usage)
        )
