"""Which engine serves a model, started behind one interface for the Triton adapter.

`config.engine` picks it: `ours` (LLMEngine, continuous batching), `fallback` (per-request
`generate`, fallback.py) or `vllm` (vLLM's engine, vllm_engine.py, imported only then so the
default install never needs vLLM). With `ours`, a model the batching engine cannot take goes
to the fallback on its own: a seq2seq model, or a causal LM whose forward rejects our KV
cache (tried with a two-token prefill and one decode step before serving).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import EngineConfig
from .engine import EngineStats, EventSink, LLMEngine
from .errors import EngineError
from .fallback import FallbackEngine, is_seq2seq, load_for_fallback
from .loader import load_model
from .types import GenerationRequest

logger = logging.getLogger(__name__)

Loader = Callable[[EngineConfig], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


class ServingEngine(Protocol):
    """What the Triton adapter calls on an engine, whichever it is."""

    max_model_len: int

    @property
    def stats(self) -> EngineStats: ...

    def add_requests(self, items: list[tuple[GenerationRequest, EventSink]]) -> list[int | EngineError]: ...

    def abort(self, request_id: str) -> None: ...

    def tokenize(self, request: GenerationRequest) -> list[int]: ...


def cache_rejection(model: PreTrainedModel) -> str | None:
    """Why the batching engine cannot run `model` (None when it can): a tiny prefill and one
    decode step through our KV batch."""
    from .batch import decode, prefill

    try:
        batch, logits = prefill(model, [[0, 1]])
        decode(model, batch, [int(logits[0].argmax())])
    except Exception as exc:  # noqa: BLE001 - any failure means "not with our cache"
        return f"{type(exc).__name__}: {exc}"
    return None


def _wants_fallback(config: EngineConfig) -> bool:
    """`engine: fallback`, or a seq2seq model (read from its config, before any weights)."""
    if config.engine == "fallback":
        return True
    from transformers import AutoConfig

    from .loader import resolve_model_path

    gguf: dict[str, Any] = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    try:
        model_config = AutoConfig.from_pretrained(resolve_model_path(config.model_path),
                                                  trust_remote_code=config.trust_remote_code, **gguf)
    except Exception:  # noqa: BLE001 - the real loader reports a missing model properly
        return False
    return is_seq2seq(model_config)


class EngineHost:
    """Starts one engine on its own thread (it loads the model there) and stops it.

    For `ours` and `fallback`; `start()` returns the engine once it serves and `kind` says
    which one it is ("ours" or "fallback"). A `loader` may replace loading from
    `model_path` (tests pass in-memory models); the choice then looks at the model it returns.
    """

    def __init__(self, config: EngineConfig, loader: Loader | None = None, name: str = "chatllm-engine") -> None:
        self.config = config
        self.kind = "ours"
        self._loader = loader
        self._ready = threading.Event()
        self._engine: LLMEngine | FallbackEngine | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> ServingEngine:
        """Load and choose on the new thread; raises EngineError with the cause on failure."""
        self._thread.start()
        self._ready.wait()
        if self._engine is None:
            raise EngineError(f"loading the model failed: {self._error}") from self._error
        return self._engine

    def stop(self, timeout: float | None = 10.0) -> None:
        if self._engine is not None:
            self._engine.stop()
        self._thread.join(timeout)
        if isinstance(self._engine, FallbackEngine):
            self._engine.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
        if self._loader is not None:
            model, tokenizer = self._loader(self.config)
            return model, tokenizer, self.config.engine == "fallback" or is_seq2seq(model.config)
        if _wants_fallback(self.config):
            model, tokenizer = load_for_fallback(self.config)
            return model, tokenizer, True
        model, tokenizer = load_model(self.config)
        return model, tokenizer, False

    def _main(self) -> None:
        try:
            model, tokenizer, fallback = self._load()
            reason = "seq2seq model" if fallback and self.config.engine != "fallback" else None
            if not fallback:
                reason = cache_rejection(model)
                fallback = reason is not None
            if fallback:
                if reason is not None:
                    logger.warning("the batching engine cannot take this model (%s): serving it with "
                                   "per-request generate, %d at a time", reason, self.config.fallback_concurrency)
                self.kind = "fallback"
                self._engine = FallbackEngine(model, tokenizer, self.config)
                return
            self._engine = LLMEngine(model, tokenizer, self.config)
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            return
        finally:
            self._ready.set()
        self._engine.run()


def engine_host(config: EngineConfig) -> Any:
    """The host for `config.engine`: EngineHost, or vLLM's (imported only when asked for)."""
    if config.engine == "vllm":
        from .vllm_engine import VllmEngineHost

        return VllmEngineHost(config)
    return EngineHost(config)
