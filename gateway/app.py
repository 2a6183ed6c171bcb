"""The FastAPI application factory and the single place errors become HTTP answers."""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.body_limit import BodySizeLimitMiddleware
from gateway.disconnect import ClientDisconnected
from gateway.errors import AuthenticationError, GatewayError, InvalidRequestError, error_response
from gateway.llm_client import LLMClient
from gateway.metrics import METRICS_PATH, install_metrics
from gateway.model_registry import ModelRegistry
from gateway.routers import chat, completions, embeddings, fastchat, models, tokens, webui
from gateway.serving import GatewayState
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", METRICS_PATH, "/"})
"""Routes that need no API key (Prometheus scrapes `/metrics` like a health probe; the web
chat page at `/` asks for the key itself)."""

# Pydantic puts union member tags ("str", "list[str]", "TextPart") into error locations.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|[A-Z]\w*)$")


def create_app(
    settings: GatewaySettings, client: LLMClient, registry: CollectorRegistry | None = None
) -> FastAPI:
    """Build the gateway; `client` is closed when the app shuts down.

    `registry` receives the gateway's metrics (served on `/metrics`); a new one when None.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.state.fastchat.close()
            await client.close()

    app = FastAPI(title="tritonchat gateway", lifespan=lifespan)
    app.state.gateway = GatewayState(
        settings=settings,
        client=client,
        registry=ModelRegistry(client, settings.model_list_ttl_s),
        created=int(time.time()),
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_keys=settings.api_keys, open_paths=OPEN_PATHS)
    install_metrics(app, registry)  # outermost: counts the 401s too
    _add_exception_handlers(app)
    app.include_router(models.health_router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(tokens.router)
    fastchat.install(app)  # FastChat's controller and worker API
    app.include_router(webui.router)
    return app


class ApiKeyMiddleware:
    """Rejects requests without a valid `Authorization: Bearer <key>` (when keys are set).

    A plain ASGI middleware, so it answers before body parsing (a 401 wins over a 400)
    and does not wrap streaming responses.
    """

    def __init__(self, app: ASGIApp, api_keys: Sequence[str], open_paths: frozenset[str]) -> None:
        self._app = app
        self._keys = [k.encode() for k in api_keys]
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        given = token.strip().encode()
        valid = scheme.lower() == "bearer" and any(
            hmac.compare_digest(given, key) for key in self._keys
        )
        if not valid:
            message = (
                "Incorrect API key provided."
                if token
                else "Missing API key (Authorization: Bearer <key>)."
            )
            response = error_response(AuthenticationError(message), {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def _param_path(error: Any) -> list[str]:
    return [str(p) for p in error.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]


def validation_error(
    exc: RequestValidationError, content_type: str = "application/json"
) -> InvalidRequestError:
    """A 400 naming the offending field in `param`, e.g. `"messages.0.content"`."""
    errors: Sequence[Any] = exc.errors()
    if not errors:
        return InvalidRequestError("invalid request")
    first = errors[0]
    if "json" not in content_type.lower() and tuple(first.get("loc", ())) == ("body",):
        # FastAPI does not parse bodies sent without a JSON content type (CSRF guard).
        return InvalidRequestError(
            "the request body must be JSON sent with Content-Type: application/json"
        )
    if first.get("type") == "json_invalid":
        return InvalidRequestError(f"malformed JSON body: {first.get('msg', '')}")
    if tuple(first.get("loc", ())) == ("body",):
        return InvalidRequestError("the request body must be a JSON object")
    # Report the first field; of its union alternatives, the deepest error tells most.
    paths = [_param_path(e) for e in errors]
    same_field = [i for i in range(len(errors)) if paths[i][:1] == paths[0][:1]]
    deepest = max(same_field, key=lambda i: len(paths[i]))
    param = ".".join(paths[deepest]) or None
    message = str(errors[deepest].get("msg", "invalid value"))
    if param:
        message = f"{param}: {message}"
    return InvalidRequestError(message, param=param)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def _add_exception_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        log = logger.warning if exc.status_code >= 500 else logger.info
        log(
            "request %s: %s %s -> %d: %s",
            _request_id(request),
            request.method,
            request.url.path,
            exc.status_code,
            exc.message,
        )
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        content_type = request.headers.get("content-type", "")
        return error_response(validation_error(exc, content_type))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return error_response(GatewayError(exc.status_code, str(exc.detail), err_type, code=code), exc.headers)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        logger.info("request %s: client disconnected, generation cancelled", _request_id(request))
        return Response(status_code=499)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception(
            "request %s: %s %s failed",
            _request_id(request),
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return error_response(GatewayError(500, "internal error", "server_error"))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
