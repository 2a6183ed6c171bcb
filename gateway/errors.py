"""Typed gateway errors and the one mapping from upstream failures to HTTP.

Every error the gateway answers with is a `GatewayError`; `app.py` turns it into OpenAI's
error JSON in a single exception handler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from chatllm_wire import split_error

RETRY_AFTER_S = 1
"""Seconds suggested to clients in `Retry-After` on 429 and 503."""

# Triton prefixes its own errors (e.g. "Exceeds maximum queue size") with the request id.
_REQUEST_ID_PREFIX = re.compile(r"^\s*\[request id: [^\]]*\]\s*")


class GatewayError(Exception):
    """An error with everything needed for the HTTP answer."""

    def __init__(
        self,
        status_code: int,
        message: str,
        err_type: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.err_type = err_type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for the answer."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error object: `{"error": {...}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    """The client sent something we cannot serve (400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message, "invalid_request_error", param=param)


class ModelNotFoundError(GatewayError):
    """The requested model is not served (404)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            404,
            f"The model `{model}` does not exist.",
            "NotFoundError",
            param="model",
            code="model_not_found",
        )


class AuthenticationError(GatewayError):
    """Missing or wrong API key (401)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, "invalid_request_error", code="invalid_api_key")


class UpstreamError(GatewayError):
    """Triton (or the model) failed; built by `upstream_error`."""

    @property
    def overloaded(self) -> bool:
        """The server is full (429): retry later or elsewhere; it is not down."""
        return self.status_code == 429

    @property
    def server_side(self) -> bool:
        """The server failed or went away (unreachable, shutting down, killed, cancelled by
        Triton): the request itself is fine and may run again on another server."""
        return self.status_code == 503


# Model errors carry their code in brackets; gRPC statuses arrive as "StatusCode.X".
# CANCELLED reaches a client only when someone else cancelled its request (e.g. Triton
# shutting down): when the gateway cancels, nobody is reading any more.
_BY_CODE: dict[str, tuple[int, str, str | None]] = {
    "INVALID_ARG": (400, "invalid_request_error", None),
    "INVALID_ARGUMENT": (400, "invalid_request_error", None),
    "UNSUPPORTED": (400, "invalid_request_error", None),
    "NOT_FOUND": (404, "NotFoundError", "model_not_found"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded"),
    "UNAVAILABLE": (503, "service_unavailable_error", "service_unavailable"),
    "CANCELLED": (503, "service_unavailable_error", "cancelled"),
    "DEADLINE_EXCEEDED": (504, "timeout_error", "timeout"),
}
_INTERNAL = (500, "server_error", None)


def _code_from_status(grpc_status: str | None) -> str | None:
    if not grpc_status:
        return None
    name = grpc_status.rsplit(".", 1)[-1].strip().upper()
    return name or None


OVERLOADED_MARKERS = ("exceeds maximum queue size", "at capacity")
"""Full, not down: Triton's own queue-policy refusal and the chatllm engine's
`EngineOverloaded` ("[UNAVAILABLE] the engine is at capacity ...")."""


STOPPING_MARKERS = ("server is stopping", "stopped accepting new inference requests")
"""Triton draining after SIGTERM: the server is going away (503, retried elsewhere)."""


def is_stopping_message(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in STOPPING_MARKERS)


def is_overload_message(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in OVERLOADED_MARKERS)


def _code_from_message(message: str, *, specific: bool) -> str | None:
    lowered = message.lower()
    if specific:
        if is_overload_message(lowered):
            return "RESOURCE_EXHAUSTED"
        if "unknown model" in lowered:
            return "NOT_FOUND"
    elif "not found" in lowered:
        return "NOT_FOUND"
    return None


def upstream_error(message: str, grpc_status: str | None = None) -> UpstreamError:
    """Map an upstream failure to the HTTP error shown to clients.

    Args:
        message: The error text; a leading `[CODE]` set by our backend is used for the
            mapping and stripped from what users see.
        grpc_status: `InferenceServerException.status()` or a `grpc.StatusCode` name,
            when the failure had a gRPC status (stream errors do not).
    """
    bracket_code, text = split_error(_REQUEST_ID_PREFIX.sub("", message))
    status_code = _code_from_status(grpc_status)
    if is_overload_message(text):
        # Being full is not being down: a 429 the client may retry, never a reason to take
        # the server out of routing (a 503 would be).
        bracket_code = "RESOURCE_EXHAUSTED"
    elif is_stopping_message(text):
        bracket_code = "UNAVAILABLE"
    code = (
        bracket_code
        or _code_from_message(text, specific=True)
        or (status_code if status_code in _BY_CODE else None)
        or _code_from_message(text, specific=False)
    )
    return status_error(code or "", text or "upstream error")


def status_error(code: str, message: str) -> UpstreamError:
    """The error for a status name of `_BY_CODE` (e.g. "UNAVAILABLE": 503 with Retry-After);
    500 for any other name."""
    status, err_type, err_code = _BY_CODE.get(code, _INTERNAL)
    retry = RETRY_AFTER_S if status in (429, 503) else None
    return UpstreamError(status, message, err_type, code=err_code, retry_after_s=retry)


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The HTTP answer for `error`: OpenAI's error JSON, its status, its headers plus `headers`."""
    return JSONResponse(
        error.to_dict(), status_code=error.status_code, headers={**error.headers, **(headers or {})}
    )
