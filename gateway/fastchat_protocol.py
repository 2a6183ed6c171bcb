"""FastChat's controller and worker wire format (fschat 0.2.36), as pydantic models.

FastChat's clients (`test_message`, `openai_api_server`, `gradio_web_server`, apps such as
Langchain-Chatchat) post plain JSON to a controller and to model workers. A worker streams
its answer as JSON objects each followed by a NUL byte, every object carrying the whole text
so far (`text`), `error_code` (0, or one of `FastChatErrorCode`), `usage` and
`finish_reason`. Errors are in-band: the HTTP status stays 200.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import GatewayError

DEFAULT_MAX_NEW_TOKENS = 256
"""FastChat's worker default when a request names no `max_new_tokens`."""


class FastChatErrorCode(IntEnum):
    """The `error_code` values FastChat's clients know (`fastchat.constants.ErrorCode`)."""

    VALIDATION_TYPE_ERROR = 40001
    INVALID_AUTH_KEY = 40101
    INVALID_MODEL = 40301
    PARAM_OUT_OF_RANGE = 40302
    CONTEXT_OVERFLOW = 40303
    RATE_LIMIT = 42901
    ENGINE_OVERLOADED = 42903
    INTERNAL_ERROR = 50001
    CONTROLLER_NO_WORKER = 50005
    CONTROLLER_WORKER_TIMEOUT = 50006


_CODE_BY_STATUS = {
    401: FastChatErrorCode.INVALID_AUTH_KEY,
    404: FastChatErrorCode.INVALID_MODEL,
    400: FastChatErrorCode.PARAM_OUT_OF_RANGE,
    429: FastChatErrorCode.ENGINE_OVERLOADED,
    503: FastChatErrorCode.CONTROLLER_NO_WORKER,
    504: FastChatErrorCode.CONTROLLER_WORKER_TIMEOUT,
}


def error_code_of(error: GatewayError) -> FastChatErrorCode:
    """The FastChat code for one of our HTTP errors."""
    if error.code == "context_length_exceeded" or "context length" in error.message.lower():
        return FastChatErrorCode.CONTEXT_OVERFLOW
    return _CODE_BY_STATUS.get(error.status_code, FastChatErrorCode.INTERNAL_ERROR)


def stream_frame(payload: dict[str, Any]) -> bytes:
    """One object of a worker stream: JSON, then the NUL delimiter."""
    return json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\0"


def error_payload(code: FastChatErrorCode, message: str) -> dict[str, Any]:
    return {"text": message, "error_code": int(code)}


class _Lenient(BaseModel):
    """FastChat clients send extra keys (`images`, `best_of`, ...): ignore what we do not use."""

    model_config = ConfigDict(extra="ignore")


class WorkerGenerateParams(_Lenient):
    """The body of `/worker_generate_stream` and `/worker_generate`: a raw prompt (the
    client applied its conversation template) and FastChat's sampling fields. Other keys
    (`images`, ...) are kept for workers this request is passed through to."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = None
    """-1 (FastChat's default) or 0 disables it."""
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_new_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    echo: bool = True
    """FastChat's worker echoes the prompt unless told not to."""
    logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None

    def stop_strings(self) -> tuple[str, ...]:
        items = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in items if s)


class WorkerStatus(_Lenient):
    """What a FastChat worker reports about itself (`/worker_get_status`)."""

    model_names: list[str]
    speed: float = 1.0
    queue_length: int = 0


class RegisterWorkerRequest(_Lenient):
    """`/register_worker`: a FastChat worker (or another controller) joins."""

    worker_name: str = Field(min_length=1)
    """Its base URL, e.g. `http://10.0.0.5:31000`."""
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None
    """None: the controller asks the worker's `/worker_get_status`."""
    multimodal: bool = False


class HeartBeatRequest(_Lenient):
    worker_name: str
    queue_length: int = 0


class ModelRequest(_Lenient):
    """Bodies that only name a model (`/get_worker_address`, `/model_details`, ...)."""

    model: str = ""


class CountTokenRequest(_Lenient):
    model: str = ""
    prompt: str


class EmbeddingParams(_Lenient):
    """`/worker_get_embeddings`: `input` is a list of texts (FastChat batches them)."""

    model: str = Field(min_length=1)
    input: list[str] | str
    encoding_format: str | None = None
    """"base64": each vector as base64 of little-endian float32, as FastChat sends it."""


class RegisterTritonRequest(BaseModel):
    """`/register_triton`: a Triton server joins (or beats); repeat within the interval."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3)
    """Its gRPC `host:port`, as the gateway can reach it."""
    heartbeat_interval_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """The sender's beat interval; it is dropped when no beat came for 1.5 intervals."""


class UnregisterTritonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3)
