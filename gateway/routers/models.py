"""`GET /v1/models`, `GET /v1/models/{id}` and `GET /health`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.errors import status_error
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
    cards = await state.registry.cards()
    return ModelList(data=[_model_object(card, state.created) for card in cards])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> ModelObject:
    state = get_state(request)
    return _model_object(await state.registry.resolve(model_id), state.created)


@health_router.get("/health")
async def health(request: Request) -> dict[str, str]:
    """200 when Triton is ready to serve, else 503 (for load balancers and launchers)."""
    if not await get_state(request).client.is_ready():
        raise status_error("UNAVAILABLE", "Triton is not ready")
    return {"status": "ok"}
