"""`add_request` for one request, on top of the `add_requests` every engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from .errors import EngineError
from .types import EventSink, GenerationRequest


class RequestAdder(ABC):
    """An engine's way in: `add_requests` for what arrived together, `add_request` for one."""

    @abstractmethod
    def add_requests(self, items: list[tuple[GenerationRequest, EventSink]]) -> list[int | EngineError]:
        """Queue requests; per request its prompt token count or why it was refused."""

    def add_request(self, request: GenerationRequest, sink: EventSink) -> int:
        """Validate and queue a request; events go to `sink` (called on the engine's thread).

        Returns the number of prompt tokens. Raises InvalidRequest, ContextTooLong or
        EngineOverloaded (nothing is queued then), EngineDead after a fatal failure.
        """
        result = self.add_requests([(request, sink)])[0]
        if isinstance(result, EngineError):
            raise result
        return result
