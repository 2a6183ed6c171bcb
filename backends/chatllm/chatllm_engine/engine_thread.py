"""One thread that owns the model: it loads the weights and then runs the engine's step loop.

Why one thread: torch's CPU kernels run on OpenMP (libgomp), which gives every thread that
starts parallel work its own team of worker threads. Once there are more of those threads
than cores (the thread that loaded the model + the step loop's thread, each with a team),
libgomp stops spinning between parallel regions and every operator pays a wake-up. On 2
cores that made each decode step 20-25% slower. So loading, warm-up and every forward pass
happen here, and other threads only tokenize and queue requests.
"""

from __future__ import annotations

import threading
from typing import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import EngineConfig
from .engine import LLMEngine
from .errors import EngineError
from .loader import load_model

Loader = Callable[[EngineConfig], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


class EngineThread:
    """Starts the thread, waits until the engine exists, and stops it."""

    def __init__(self, config: EngineConfig, loader: Loader = load_model, name: str = "chatllm-engine") -> None:
        self.config = config
        self._loader = loader
        self._ready = threading.Event()
        self._engine: LLMEngine | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> LLMEngine:
        """Load the model on the new thread and return its engine (already stepping).

        Raises EngineError with the cause when loading fails.
        """
        self._thread.start()
        self._ready.wait()
        if self._engine is None:
            raise EngineError(f"loading the model failed: {self._error}") from self._error
        return self._engine

    def stop(self, timeout: float | None = 10.0) -> None:
        if self._engine is not None:
            self._engine.stop()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            model, tokenizer = self._loader(self.config)
            self._engine = LLMEngine(model, tokenizer, self.config)
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            return
        finally:
            self._ready.set()
        self._engine.run()
