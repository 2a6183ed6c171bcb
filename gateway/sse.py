"""Server-sent events as OpenAI streams them: the framing, a generation's event stream and
its HTTP response.

Every event is `data: {json}`; the stream always ends with `data: [DONE]`. A failure after
the 200 becomes one error event (OpenAI's error object) before `[DONE]`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"


def event(payload: BaseModel | dict[str, object]) -> str:
    """One `data: {json}` event."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json()
    else:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {body}\n\n"


def error_event(exc: Exception, request_id: str) -> dict[str, object]:
    """The payload of the error event sent when a stream fails after its 200."""
    if isinstance(exc, GatewayError):
        logger.warning("request %s failed mid-stream: %s", request_id, exc.message)
        return exc.to_dict()
    logger.exception("request %s failed mid-stream", request_id, exc_info=exc)
    return GatewayError(500, "internal error", "server_error").to_dict()


async def events(
    chunks: AsyncGenerator[BaseModel, None],
    request_id: str,
    generation: AsyncGenerator[object, None],
) -> AsyncIterator[str]:
    """`chunks` (made from `generation`) as SSE events, then `[DONE]`. A failure after the 200
    becomes one error event; both are closed in any case, which cancels what is still
    running upstream when the client went away."""
    try:
        async for chunk in chunks:
            yield event(chunk)
    except Exception as exc:  # noqa: BLE001 - after the 200: report in-band, then end the stream
        yield event(error_event(exc, request_id))
    finally:
        await chunks.aclose()
        await generation.aclose()
    yield DONE


def response(body: AsyncIterator[str], headers: dict[str, str] | None = None) -> StreamingResponse:
    """An event stream; Starlette cancels `body` when the client disconnects."""
    return StreamingResponse(
        body,
        media_type=MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
