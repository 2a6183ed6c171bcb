"""`GET /v1/models`, `GET /v1/models/{id}` and `GET /health`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.llm_client import ModelCard
from gateway.protocol import ModelList, ModelObject
from gateway.serving import get_state

router = APIRouter()
health_router = APIRouter()


def _model_object(card: ModelCard, created: int) -> ModelObject:
    return ModelObject(
        id=card.id,
        created=created,
        root=card.triton_model,
        parent=None if card.id == card.triton_model else card.triton_model,
        context_length=card.context_length,
        max_model_len=card.context_length,
        engine=card.engine,
    )


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    state = get_state(request)
    cards = await state.registry.list()
    return ModelList(data=[_model_object(card, state.created) for card in cards])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> ModelObject:
    state = get_state(request)
    return _model_object(await state.registry.resolve(model_id), state.created)


@health_router.get("/health", response_model=None)
async def health(request: Request) -> JSONResponse:
    """200 when Triton is ready to serve, else 503 (for load balancers and launchers)."""
    if await get_state(request).client.is_ready():
        return JSONResponse({"status": "ok"})
    return JSONResponse(
        {
            "error": {
                "message": "Triton is not ready",
                "type": "service_unavailable_error",
                "param": None,
                "code": "service_unavailable",
            }
        },
        status_code=503,
        headers={"Retry-After": "1"},
    )
