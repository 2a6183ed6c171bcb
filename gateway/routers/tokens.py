"""FastChat's `POST /api/v1/token_check`: does each prompt, plus its max_tokens, fit?"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

import chatllm_wire as wire
from gateway.disconnect import race_disconnect
from gateway.errors import GatewayError
from gateway.protocol import TokenCheckItem, TokenCheckRequest, TokenCheckResponse, TokenCheckResult
from gateway.serving import check_inputs, get_state, resolve_model, start_request

router = APIRouter()


@router.post("/api/v1/token_check")
async def token_check(body: TokenCheckRequest, request: Request) -> TokenCheckResponse:
    """Token counts come from the model's own tokenizer (the prompt as plain text, no chat
    template); `fits` is `tokenCount + max_tokens <= contextLength`, true when the context
    length is unknown."""
    request_id = start_request(request, "tokcheck")
    client = get_state(request).client

    async def check(index: int, item: TokenCheckItem) -> TokenCheckResult:
        try:
            card = await resolve_model(request, item.model, "generate")
            check_inputs(card, wire.COUNT_TOKENS_ONLY)
            count = await client.count_tokens(
                card.triton_model, item.prompt, f"{request_id}-{index}"
            )
        except GatewayError as exc:
            if exc.param is not None:
                exc.param = f"prompts.{index}.{exc.param}"
            raise
        limit = card.context_length
        return TokenCheckResult(
            fits=limit is None or count + item.max_tokens <= limit,
            token_count=count,
            context_length=limit,
        )

    results = await race_disconnect(
        request, asyncio.gather(*(check(i, item) for i, item in enumerate(body.prompts)))
    )
    return TokenCheckResponse(prompts=list(results))
