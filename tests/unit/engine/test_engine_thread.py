"""EngineHost: the model is loaded, and every forward pass runs, on the engine's own thread."""

from __future__ import annotations

import threading

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.config import EngineConfig
from chatllm_engine.engine_host import EngineHost
from chatllm_engine.errors import EngineError
from chatllm_engine.types import GenerationRequest

from .conftest import engine_config
from .support import greedy
from .test_run_thread import WaitableCollector


def test_loads_and_steps_on_one_thread_that_is_not_the_callers(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    loaded_on: list[int] = []
    forward_on: set[int] = set()

    def loader(config: EngineConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        loaded_on.append(threading.get_ident())
        return tiny_model, tiny_tokenizer

    hook = tiny_model.register_forward_pre_hook(lambda module, args: forward_on.add(threading.get_ident()))
    worker = EngineHost(engine_config(), test_loader=loader)
    try:
        engine = worker.start()
        collector = WaitableCollector()
        engine.add_request(GenerationRequest("r", prompt="Hello world", sampling=greedy(5)), collector.sink("r"))
        collector.wait_for(lambda: collector.done("r"))
    finally:
        worker.stop()
        hook.remove()
    assert len(collector.tokens("r")) == 5
    assert loaded_on and loaded_on[0] != threading.get_ident()
    assert forward_on == {loaded_on[0]}


def test_stop_ends_the_thread(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    worker = EngineHost(engine_config(), test_loader=lambda config: (tiny_model, tiny_tokenizer))
    worker.start()
    worker.stop()
    assert not worker.is_alive()


def test_a_failed_load_is_raised_by_start_with_its_cause() -> None:
    def loader(config: EngineConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        raise OSError("no such model folder: /nowhere")

    with pytest.raises(EngineError, match="no such model folder: /nowhere"):
        EngineHost(engine_config(), test_loader=loader).start()
