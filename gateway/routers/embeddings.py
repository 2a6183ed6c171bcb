"""`POST /v1/embeddings` (and FastChat's `POST /v1/engines/{model}/embeddings`)."""

from __future__ import annotations

import base64
import logging

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.disconnect import race_disconnect
from gateway.errors import InvalidRequestError
from gateway.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from gateway.serving import get_state, resolve_model, start_request

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await _serve(body, body.model, request)


@router.post("/v1/engines/{model_name:path}/embeddings", response_model=None)
async def create_engine_embeddings(
    model_name: str, body: EmbeddingRequest, request: Request
) -> Response:
    """FastChat's legacy route: the model named in the path wins."""
    return await _serve(body, model_name, request)


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    """Floats as they are, or base64 of little-endian float32 (what the openai SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def _serve(body: EmbeddingRequest, model: str | None, request: Request) -> Response:
    request_id = start_request(request, "embd")
    if not model:
        raise InvalidRequestError("model: Field required", param="model")
    card = await resolve_model(request, model, "embed")
    texts = body.texts()
    logger.info("request %s: %d embedding(s) on %s", request_id, len(texts), card.triton_model)
    client = get_state(request).client
    result = await race_disconnect(request, client.embed(card.triton_model, texts, request_id))
    size = len(result.vectors[0]) if result.vectors else 0
    if body.dimensions is not None and body.dimensions != size:
        raise InvalidRequestError(
            f"dimensions: `{model}` makes vectors of {size} dimensions, not {body.dimensions}",
            param="dimensions",
        )
    response = EmbeddingResponse(
        data=[
            EmbeddingData(index=i, embedding=encode(vector, body.encoding_format))
            for i, vector in enumerate(result.vectors)
        ],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )
    return JSONResponse(response.model_dump())
