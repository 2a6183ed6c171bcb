"""`POST /v1/chat/completions` and FastChat's `POST /api/v1/chat/completions`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

import chatllm_wire as wire
from gateway.errors import InvalidRequestError
from gateway.generation import ChoiceDelta, UsageCounter
from gateway.llm_client import GenerationInput, TokenLogprob
from gateway.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobEntry,
    ChatMessage,
    ChatResponseMessage,
    DeltaMessage,
    DeltaToolCall,
    FastChatCompletionRequest,
    TopLogprobEntry,
)
from gateway.reasoning import ReasoningStream, split_reasoning
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
from gateway.tools import ToolCallStream, ToolPlan, finish_reason, parse_tool_output, plan_tools

logger = logging.getLogger(__name__)

router = APIRouter()

# Chat templates know system/user/assistant (and often tool); "developer" is OpenAI's
# newer name for "system".
_ROLE_FOR_TEMPLATE = {"developer": "system"}


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await _serve(body, request)


@router.post("/api/v1/chat/completions", response_model=None)
async def create_fastchat_chat_completion(
    body: FastChatCompletionRequest, request: Request
) -> Response:
    return await _serve(body, request)


def _reject_unsupported(body: ChatCompletionRequest) -> None:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError(
            "top_logprobs needs logprobs to be true", param="top_logprobs"
        )


def _top_count(body: ChatCompletionRequest) -> int | None:
    """None without logprobs, else how many alternatives each token lists."""
    return (body.top_logprobs or 0) if body.logprobs else None


def _entry(token: str, logprob: float) -> TopLogprobEntry:
    return TopLogprobEntry(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))


def chat_logprobs(tokens: Sequence[TokenLogprob], top: int) -> ChatChoiceLogprobs:
    """OpenAI's chat `logprobs.content`: one entry per token with its `top` alternatives."""
    return ChatChoiceLogprobs(
        content=[
            ChatLogprobEntry(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode("utf-8")),
                top_logprobs=[_entry(a.token, a.logprob) for a in t.top[:top]],
            )
            for t in tokens
        ]
    )


async def _serve(body: ChatCompletionRequest, request: Request) -> Response:
    request_id = start_request(request, "chatcmpl")
    _reject_unsupported(body)
    structure = requested_structure(body)
    card = await resolve_model(request, body.model, "generate")
    plan = plan_tools(body, card.tool_call_parser)
    if plan.constraint is not None and structure is not None:
        raise InvalidRequestError(
            "tool_choice required or a named function cannot be combined with a structured output",
            param="tool_choice",
        )
    check_inputs(
        card,
        wire.RETURN_LOGPROBS if _top_count(body) is not None else None,
        wire.TOOLS if plan.tools else None,
        wire.CHAT_TEMPLATE_KWARGS if body.chat_template_kwargs else None,
    )
    messages = tuple(_message(m) for m in body.messages)
    sampling = sampling_params(
        body,
        body.effective_max_tokens(),
        _top_count(body),
        plan.constraint or structure,
        ignore_eos=body.ignore_eos,
    )
    choices = [
        GenerationInput(
            model=card.triton_model,
            messages=messages,
            sampling=for_choice(sampling, i),
            request_id=f"{request_id}-{i}",
            replayable=not body.stream,
            tools=plan.tools or None,
            chat_template_kwargs=body.chat_template_kwargs,
        )
        for i in range(body.n)
    ]
    logger.info("request %s: chat on %s, n=%d", request_id, card.triton_model, body.n)
    thinks = card.reasoning_parser == "think"
    return await respond(
        request,
        request_id,
        body.stream,
        [choices],
        lambda deltas, usage: _chunks(body, plan, thinks, request_id, deltas, usage),
        lambda deltas, usage: _collect(body, plan, thinks, request_id, deltas, usage),
    )


def _message(message: ChatMessage) -> dict[str, Any]:
    """A message as the backend's chat template takes it (chatllm_wire.check_messages)."""
    out: dict[str, Any] = {"role": _ROLE_FOR_TEMPLATE.get(message.role, message.role)}
    if message.tool_calls:
        out["content"] = message.text() or None
        out["tool_calls"] = [c.model_dump() for c in message.tool_calls]
    else:
        out["content"] = message.text()
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


async def _collect(
    body: ChatCompletionRequest,
    plan: ToolPlan,
    thinks: bool,
    request_id: str,
    events: AsyncIterator[ChoiceDelta],
    usage: UsageCounter,
) -> ChatCompletionResponse:
    top = _top_count(body)
    choices = []
    for i, choice in enumerate(await collect_choices(events, body.n)):
        reasoning, text = split_reasoning(choice.text) if thinks else (None, choice.text)
        content, calls = parse_tool_output(plan, text)
        choices.append(
            ChatChoice(
                index=i,
                message=ChatResponseMessage(
                    content=content, reasoning_content=reasoning, tool_calls=calls or None
                ),
                logprobs=None if top is None else chat_logprobs(choice.logprobs, top),
                finish_reason=finish_reason(plan, choice.finish_reason, bool(calls)),
            )
        )
    return ChatCompletionResponse(
        id=request_id, model=body.model, choices=choices, usage=usage_info(usage)
    )


async def _chunks(
    body: ChatCompletionRequest,
    plan: ToolPlan,
    thinks: bool,
    request_id: str,
    events: AsyncGenerator[ChoiceDelta, None],
    usage: UsageCounter,
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """Role chunk per choice, content chunks as they come, a finish chunk per choice, the
    usage chunk when asked for."""
    created = int(time.time())
    top = _top_count(body)

    def chunk(
        index: int,
        delta: DeltaMessage,
        finish_reason: str | None = None,
        logprobs: ChatChoiceLogprobs | None = None,
    ) -> ChatCompletionChunk:
        choice = ChatChunkChoice(
            index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason
        )
        return ChatCompletionChunk(
            id=request_id, created=created, model=body.model, choices=[choice]
        )

    def pieces(
        index: int,
        reasoning: str,
        text: str,
        calls: list[DeltaToolCall],
        tokens: Sequence[TokenLogprob],
    ) -> list[ChatCompletionChunk]:
        logprobs = None if top is None or not tokens else chat_logprobs(tokens, top)
        out = []
        if reasoning:
            out.append(chunk(index, DeltaMessage(reasoning_content=reasoning)))
        if text or logprobs is not None:
            out.append(chunk(index, DeltaMessage(content=text), logprobs=logprobs))
        if calls:
            out.append(chunk(index, DeltaMessage(tool_calls=calls)))
        return out

    streams = [ToolCallStream(plan) for _ in range(body.n)]
    thoughts = [ReasoningStream() if thinks else None for _ in range(body.n)]
    for i in range(body.n):
        yield chunk(i, DeltaMessage(role="assistant", content=""))
    async for delta in events:
        stream, thought = streams[delta.index], thoughts[delta.index]
        reasoning, text = thought.feed(delta.text) if thought else ("", delta.text)
        text, calls = stream.feed(text)
        for item in pieces(delta.index, reasoning, text, calls, delta.logprobs):
            yield item
        if delta.finish_reason is not None:
            reasoning, text = thought.finish() if thought else ("", "")
            fed, calls = stream.feed(text)
            rest, more = stream.finish()
            for item in pieces(delta.index, reasoning, fed + rest, calls + more, ()):
                yield item
            reason = finish_reason(plan, delta.finish_reason, stream.called)
            yield chunk(delta.index, DeltaMessage(), reason)
    if body.include_usage():
        yield ChatCompletionChunk(
            id=request_id, created=created, model=body.model, choices=[], usage=usage_info(usage)
        )
