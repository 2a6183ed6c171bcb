"""Which engine serves a model, started behind one interface for the Triton adapter.

`config.engine` picks it: `ours` (LLMEngine, continuous batching), `fallback` (per-request
`generate`, fallback.py) or `vllm` (vLLM's engine, vllm_engine.py, imported only then so the
default install never needs vLLM). With `ours`, a model the batching engine cannot take goes
to the fallback on its own: a seq2seq model, or a causal LM whose forward rejects our KV
cache (tried with a two-token prefill and one decode step before serving).

Why one thread loads the model and runs every forward pass: torch's CPU kernels run on
OpenMP (libgomp), which gives every thread that starts parallel work its own team of worker
threads. Once there are more of those threads than cores, libgomp stops spinning between
parallel regions and every operator pays a wake-up (on 2 cores each decode step was 20-25%
slower). Other threads only tokenize and queue requests.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import EngineConfig
from .engine import EngineStats, LLMEngine
from .errors import EngineError
from .fallback import FallbackEngine, is_seq2seq, load_for_fallback
from .loader import load_model
from .types import EventSink, GenerationRequest

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
    """Why the batching engine cannot run `model` (None when it can).

    A two-token packed prefill and one packed decode step must run and give the logits of a
    plain forward over the same three tokens: a model whose forward takes no attention hooks
    fails, and one that ignores them (attention of its own) gives other numbers.
    """
    import torch

    from .engine import kv_cache_for
    from .packed_forward import Segment, StepLayout, forward_step, use_packed_attention

    try:
        with torch.inference_mode():
            expected = model(input_ids=torch.tensor([[0, 1, 2]], device=model.device), use_cache=False).logits[0, -1]
        use_packed_attention(model)
        cache = kv_cache_for(model, 64)
        kv = cache.allocate(4)
        if kv is None:
            return "no room for a probe sequence in a 64-token KV cache"
        forward_step(model, [0, 1], [0, 1], StepLayout((Segment(kv, 0, 2, 0),)), [1])
        got = forward_step(model, [2], [2], StepLayout((Segment(kv, 0, 1, 2),)), [0])[0]
        cache.free(kv)
    except Exception as exc:  # noqa: BLE001 - any failure means "not with our packed steps"
        return f"{type(exc).__name__}: {exc}"
    error = float((got.float() - expected.float()).abs().max())
    if error > 0.05 * float(expected.float().abs().max()) + 1e-3:
        return f"its attention ignores our packed layout (logits differ by {error:.3g})"
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
    which one it is ("ours" or "fallback"). For tests only, `test_loader` replaces loading from
    `model_path` (by in-memory models); the choice then looks at the model it returns.
    """

    def __init__(self, config: EngineConfig, name: str = "chatllm-engine", *,
                 test_loader: Loader | None = None) -> None:
        self.config = config
        self.kind = "ours"
        self._loader = test_loader
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
