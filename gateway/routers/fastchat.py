"""FastChat's controller API and worker API on the gateway (fschat 0.2.36's wire format).

The gateway is FastChat's controller and, for every model on Triton, its model worker:
`/get_worker_address` answers the gateway's own address, and the worker routes run the same
Triton requests as `/v1/completions` (a raw prompt). FastChat workers may still register
with it (`/register_worker`); their models are listed and their address handed out, and
`/worker_generate_stream` for one of their models is passed through to them.

Run-time Triton servers join with `/register_triton` (see `gateway.triton_registry`).
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

import chatllm_wire as wire
from gateway.dispatch import RoutedLLMClient
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError
from gateway.fastchat_conv import conversation_template
from gateway.fastchat_protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    CountTokenRequest,
    EmbeddingParams,
    FastChatErrorCode,
    HeartBeatRequest,
    ModelRequest,
    RegisterTritonRequest,
    RegisterWorkerRequest,
    UnregisterTritonRequest,
    WorkerGenerateParams,
    WorkerStatus,
    error_code_of,
    error_payload,
    stream_frame,
)
from gateway.fastchat_workers import FastChatWorkers
from gateway.generation import UsageCounter, stream_choice
from gateway.llm_client import GenerationInput, ModelCard, TokenLogprob
from gateway.routers.completions import completion_logprobs
from gateway.serving import check_inputs, check_kind, get_state, new_request_id, sampling_params
from gateway.triton_registry import TritonRegistry

logger = logging.getLogger(__name__)

router = APIRouter(tags=["fastchat"])

M = TypeVar("M", bound=BaseModel)

WORKER_STATUS_TIMEOUT_S = 5.0
WORKER_STREAM_TIMEOUT_S = 100.0
"""FastChat's WORKER_API_TIMEOUT, for streams passed through to registered workers."""
DEFAULT_CONTEXT_LENGTH = 4096
"""`/model_details` when the model's config.pbtxt has no `max_model_len`: FastChat's
`openai_api_server` subtracts the prompt from it to size `max_new_tokens`."""


@dataclass
class FastChatState:
    """The controller's own state; lives on `app.state.fastchat`."""

    workers: FastChatWorkers
    tritons: TritonRegistry | None
    """None when the client cannot take servers at run time (a single fixed endpoint)."""

    async def close(self) -> None:
        if self.tritons is not None:
            await self.tritons.close()


def install(app: FastAPI) -> FastChatState:
    """Add the routes and their state to `app` (after `app.state.gateway` is set)."""
    client = app.state.gateway.client
    tritons = TritonRegistry(client.pool) if isinstance(client, RoutedLLMClient) else None
    state = FastChatState(FastChatWorkers(), tritons)
    app.state.fastchat = state
    app.include_router(router)
    return state


def _fastchat(request: Request) -> FastChatState:
    state: FastChatState = request.app.state.fastchat
    return state


async def _parse(request: Request, model: type[M]) -> M:
    """The JSON body as `model`; a 400 naming the first bad field otherwise."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequestError(f"malformed JSON body: {exc}") from exc
    try:
        return model.model_validate(body if body is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidRequestError(f"{param}: {first.get('msg', 'invalid value')}", param) from exc


def _own_address(request: Request) -> str:
    """The base URL this client reached us on: it can reach our worker routes there too."""
    return str(request.base_url).rstrip("/")


async def _triton_cards(request: Request) -> list[ModelCard]:
    """Our served names; none (logged) while Triton cannot be asked, so registered FastChat
    workers are still listed."""
    try:
        return await get_state(request).registry.cards()
    except GatewayError as exc:
        logger.warning("FastChat model list without Triton's models: %s", exc.message)
        return []


async def _card(request: Request, name: str) -> ModelCard | None:
    try:
        return await get_state(request).registry.resolve(name)
    except ModelNotFoundError:
        return None


def _error_json(error: GatewayError) -> JSONResponse:
    """FastChat's in-band error shape (status 200, as its clients expect)."""
    return JSONResponse(error_payload(error_code_of(error), error.message))


# ---- controller -----------------------------------------------------------------------


@router.post("/register_worker")
async def register_worker(request: Request) -> None:
    body = await _parse(request, RegisterWorkerRequest)
    status = body.worker_status or await _fetch_worker_status(body.worker_name)
    if status is None:
        return
    _register(_fastchat(request).workers, body.worker_name, status, body.check_heart_beat, body.multimodal)


@router.post("/refresh_all_workers")
async def refresh_all_workers(request: Request) -> None:
    """Ask every registered FastChat worker for its status again; drop the silent ones."""
    workers = _fastchat(request).workers
    for name, info in workers.items():
        status = await _fetch_worker_status(name)
        if status is None:
            workers.remove(name)
            continue
        _register(workers, name, status, info.check_heart_beat, info.multimodal)


def _register(
    workers: FastChatWorkers, name: str, status: WorkerStatus, check_heart_beat: bool, multimodal: bool
) -> None:
    workers.register(
        name,
        status.model_names,
        speed=status.speed,
        queue_length=status.queue_length,
        check_heart_beat=check_heart_beat,
        multimodal=multimodal,
    )


@router.post("/list_models")
async def list_models(request: Request) -> dict[str, list[str]]:
    names = {card.id for card in await _triton_cards(request)}
    names |= _fastchat(request).workers.model_names()
    return {"models": sorted(names)}


@router.post("/list_language_models")
async def list_language_models(request: Request) -> dict[str, list[str]]:
    """Chat models only (the Gradio UI offers these): our embedding models are left out."""
    names = {card.id for card in await _triton_cards(request) if card.kind == "generate"}
    names |= _fastchat(request).workers.model_names(multimodal=False)
    return {"models": sorted(names)}


@router.post("/list_multimodal_models")
async def list_multimodal_models(request: Request) -> dict[str, list[str]]:
    return {"models": sorted(_fastchat(request).workers.model_names(multimodal=True))}


@router.post("/get_worker_address")
async def get_worker_address(request: Request) -> dict[str, str]:
    """Our own address for models on Triton; a registered worker's for its models; "" when
    nobody serves the model (FastChat's answer)."""
    body = await _parse(request, ModelRequest)
    try:
        on_triton = await _card(request, body.model) is not None
    except GatewayError as exc:  # Triton unreachable: registered workers may still serve it
        logger.warning("get_worker_address without Triton's models: %s", exc.message)
        on_triton = False
    if on_triton:
        return {"address": _own_address(request)}
    return {"address": _fastchat(request).workers.pick(body.model) or ""}


@router.post("/receive_heart_beat")
async def receive_heart_beat(request: Request) -> dict[str, bool]:
    body = await _parse(request, HeartBeatRequest)
    return {"exist": _fastchat(request).workers.heart_beat(body.worker_name, body.queue_length)}


@router.get("/test_connection")
async def test_connection() -> PlainTextResponse:
    return PlainTextResponse("success")


# ---- worker (also the controller's pass-through routes) --------------------------------


@router.post("/worker_get_status")
async def worker_get_status(request: Request) -> dict[str, Any]:
    """Every model we answer for; the queue is this gateway's requests in flight."""
    names = {card.id for card in await _triton_cards(request)}
    workers = [info for _, info in _fastchat(request).workers.items()]
    names |= {name for info in workers for name in info.model_names}
    queue_length = sum(info.queue_length for info in workers)
    client = get_state(request).client
    if isinstance(client, RoutedLLMClient):
        queue_length += sum(e.outstanding for e in client.pool.endpoints())
    return {"model_names": sorted(names), "speed": 1, "queue_length": queue_length}


@router.post("/worker_generate_stream")
async def worker_generate_stream(request: Request) -> StreamingResponse:
    # The body is read here: the streaming response owns `receive` once it starts.
    frames = _frames(request, await _read_generate(request))
    return StreamingResponse(frames, media_type="application/octet-stream")


@router.post("/worker_generate")
async def worker_generate(request: Request) -> JSONResponse:
    """The last object of the stream, as one JSON answer."""
    last = b""
    async for frame in _frames(request, await _read_generate(request)):
        last = frame
    return JSONResponse(json.loads(last.rstrip(b"\0").decode("utf-8")))


@router.post("/worker_get_embeddings")
async def worker_get_embeddings(request: Request) -> JSONResponse:
    try:
        body = await _parse(request, EmbeddingParams)
        card = check_kind(await get_state(request).registry.resolve(body.model), "embed")
        texts = [body.input] if isinstance(body.input, str) else body.input
        result = await get_state(request).client.embed(
            card.triton_model, texts, new_request_id("fcemb")
        )
    except GatewayError as exc:
        return _error_json(exc)
    vectors: list[Any] = result.vectors
    if body.encoding_format == "base64":
        vectors = [_base64_vector(v) for v in result.vectors]
    return JSONResponse({"embedding": vectors, "token_num": result.prompt_tokens})


@router.post("/count_token")
async def count_token(request: Request) -> JSONResponse:
    try:
        body = await _parse(request, CountTokenRequest)
        card = check_kind(await get_state(request).registry.resolve(body.model), "generate")
        check_inputs(card, wire.COUNT_TOKENS_ONLY)
        count = await get_state(request).client.count_tokens(
            card.triton_model, body.prompt, new_request_id("fccount")
        )
    except GatewayError as exc:
        return _error_json(exc)
    return JSONResponse({"count": count, "error_code": 0})


@router.post("/worker_get_conv_template")
async def worker_get_conv_template(request: Request) -> JSONResponse:
    body = await _parse(request, ModelRequest)
    card = await _card(request, body.model)
    return JSONResponse({"conv": conversation_template(card.conv_template if card else "")})


@router.post("/model_details")
async def model_details(request: Request) -> dict[str, int]:
    body = await _parse(request, ModelRequest)
    card = await _card(request, body.model)
    context = card.context_length if card is not None else None
    return {"context_length": context or DEFAULT_CONTEXT_LENGTH}


# ---- Triton servers that join at run time ---------------------------------------------


@router.post("/register_triton")
async def register_triton(request: Request) -> dict[str, Any]:
    """Register (first call) or beat (later calls) a Triton server's gRPC address."""
    body = await _parse(request, RegisterTritonRequest)
    registry = _tritons(request)
    try:
        new = await registry.beat(body.address, body.heartbeat_interval_s)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), "address") from exc
    return {"registered": True, "new": new}


@router.post("/unregister_triton")
async def unregister_triton(request: Request) -> dict[str, bool]:
    body = await _parse(request, UnregisterTritonRequest)
    return {"removed": await _tritons(request).unregister(body.address)}


def _tritons(request: Request) -> TritonRegistry:
    registry = _fastchat(request).tritons
    if registry is None:
        raise GatewayError(
            501, "this gateway cannot add Triton servers at run time", "invalid_request_error"
        )
    return registry


# ---- generation ---------------------------------------------------------------------


async def _read_generate(request: Request) -> WorkerGenerateParams | GatewayError:
    try:
        return await _parse(request, WorkerGenerateParams)
    except GatewayError as exc:
        return exc


async def _frames(
    request: Request, params: WorkerGenerateParams | GatewayError
) -> AsyncGenerator[bytes, None]:
    """The worker stream of one request: FastChat's NUL-delimited JSON objects, each with
    the whole text so far; any failure becomes one last object with its error code."""
    request_id = new_request_id("fastchat")
    try:
        if isinstance(params, GatewayError):
            raise params
        card = await _card(request, params.model)
        if card is None:
            worker = _fastchat(request).workers.pick(params.model)
            if worker is None:
                raise ModelNotFoundError(params.model)
            async for raw in _pass_through(worker, params.model_dump(exclude_unset=True)):
                yield raw
            return
        check_kind(card, "generate")
        check_inputs(card, wire.RETURN_LOGPROBS if params.logprobs is not None else None)
        logger.info("request %s: FastChat worker call on %s", request_id, card.triton_model)
        inp = GenerationInput(
            model=card.triton_model,
            prompt=params.prompt,
            sampling=sampling_params(
                params,
                params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                params.logprobs,
                stop_token_ids=tuple(params.stop_token_ids or ()),
            ),
            request_id=request_id,
        )
        async for payload in _generation(get_state(request).client, inp, params):
            yield stream_frame(payload)
    except GatewayError as exc:
        logger.info("request %s: FastChat worker call failed: %s", request_id, exc.message)
        yield stream_frame(error_payload(error_code_of(exc), exc.message))
    except Exception:
        logger.exception("request %s: FastChat worker call failed", request_id)
        yield stream_frame(error_payload(FastChatErrorCode.INTERNAL_ERROR, "internal error"))


async def _generation(
    client: Any, inp: GenerationInput, params: WorkerGenerateParams
) -> AsyncIterator[dict[str, Any]]:
    usage = UsageCounter()
    text = params.prompt if params.echo else ""
    tokens: list[TokenLogprob] = []
    choice = stream_choice(client, 0, inp, usage)
    try:
        async for delta in choice:
            text += delta.text
            tokens.extend(delta.logprobs)
            payload: dict[str, Any] = {
                "text": text,
                "error_code": 0,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
                "finish_reason": delta.finish_reason,
            }
            if params.logprobs is not None:
                payload["logprobs"] = completion_logprobs(tokens, params.logprobs).model_dump()
            yield payload
    finally:
        await choice.aclose()


async def _pass_through(worker: str, body: Any) -> AsyncIterator[bytes]:
    """A registered FastChat worker's stream, object by object."""
    try:
        async with (
            httpx.AsyncClient(timeout=WORKER_STREAM_TIMEOUT_S) as http,
            http.stream("POST", worker + "/worker_generate_stream", json=body) as resp,
        ):
            buffer = b""
            async for data in resp.aiter_bytes():
                buffer += data
                *frames, buffer = buffer.split(b"\0")
                for frame in frames:
                    if frame:
                        yield frame + b"\0"
    except httpx.HTTPError as exc:
        logger.warning("FastChat worker %s failed: %s", worker, exc)
        yield stream_frame(
            error_payload(
                FastChatErrorCode.CONTROLLER_WORKER_TIMEOUT, f"worker {worker} failed: {exc}"
            )
        )


async def _fetch_worker_status(worker: str) -> WorkerStatus | None:
    try:
        async with httpx.AsyncClient(timeout=WORKER_STATUS_TIMEOUT_S) as http:
            response = await http.post(worker + "/worker_get_status")
            response.raise_for_status()
            return WorkerStatus.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError) as exc:
        logger.warning("FastChat worker %s: cannot get its status: %s", worker, exc)
        return None


def _base64_vector(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
