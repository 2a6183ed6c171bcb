"""FastChat model workers registered with the gateway acting as their controller.

A FastChat deployment can keep some of its own workers (a model not yet on Triton) while the
gateway replaces the controller: they `/register_worker` and `/receive_heart_beat` as with
FastChat's controller, their models appear in `/list_models`, and `/get_worker_address`
hands out their address for those models. A worker whose beats stop is dropped after
`expiration_s` (FastChat's controller: 90 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

HEART_BEAT_EXPIRATION_S = 90.0


@dataclass
class WorkerInfo:
    """One registered FastChat worker (state owned by the event loop)."""

    model_names: tuple[str, ...]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    multimodal: bool


class FastChatWorkers:
    """Registered FastChat workers by base URL; stale ones are dropped when read."""

    def __init__(
        self,
        expiration_s: float = HEART_BEAT_EXPIRATION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expiration_s = expiration_s
        self._clock = clock
        self._workers: dict[str, WorkerInfo] = {}

    def register(
        self,
        name: str,
        model_names: list[str],
        *,
        speed: float = 1.0,
        queue_length: int = 0,
        check_heart_beat: bool = True,
        multimodal: bool = False,
    ) -> None:
        logger.info("FastChat worker %s registered (models: %s)", name, ", ".join(model_names))
        self._workers[name] = WorkerInfo(
            tuple(model_names), speed, queue_length, check_heart_beat, self._clock(), multimodal
        )

    def remove(self, name: str) -> None:
        if self._workers.pop(name, None) is not None:
            logger.info("FastChat worker %s removed", name)

    def heart_beat(self, name: str, queue_length: int) -> bool:
        """False for an unknown worker, which then registers again (FastChat's protocol)."""
        self._drop_stale()
        info = self._workers.get(name)
        if info is None:
            return False
        info.queue_length = queue_length
        info.last_heart_beat = self._clock()
        return True

    def items(self) -> list[tuple[str, WorkerInfo]]:
        self._drop_stale()
        return list(self._workers.items())

    def model_names(self, multimodal: bool | None = None) -> set[str]:
        """Models of the live workers; `multimodal` None: all, else only that kind."""
        return {
            model
            for _, info in self.items()
            if multimodal is None or info.multimodal == multimodal
            for model in info.model_names
        }

    def pick(self, model: str) -> str | None:
        """The live worker serving `model` with the shortest queue per speed, or None."""
        candidates = [(name, info) for name, info in self.items() if model in info.model_names]
        if not candidates:
            return None
        name, info = min(candidates, key=lambda c: c[1].queue_length / max(c[1].speed, 1e-6))
        info.queue_length += 1  # until its next beat reports the real length
        return name

    def _drop_stale(self) -> None:
        cutoff = self._clock() - self._expiration_s
        for name, info in list(self._workers.items()):
            if info.check_heart_beat and info.last_heart_beat < cutoff:
                logger.warning("FastChat worker %s missed its heart beats; removed", name)
                del self._workers[name]
