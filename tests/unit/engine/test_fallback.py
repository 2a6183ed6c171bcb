"""The per-request fallback: models the batching engine cannot take still stream, stop and cancel.

Two tiny random-weight models built here: a T5 (seq2seq) and a Llama whose forward accepts
only a cache of its own (as remote-code models with their own cache formats do).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, T5Config, \
    T5ForConditionalGeneration

from chatllm_engine.engine_host import EngineHost, cache_rejection
from chatllm_engine.packed_forward import STEP_KWARG
from chatllm_engine.errors import ContextTooLong, EngineOverloaded, InvalidRequest
from chatllm_engine.fallback import FallbackEngine
from chatllm_engine.types import FinishReason, GenerationRequest, SamplingParams
from chatllm_wire import StructuredOutput

from .conftest import engine_config
from .support import greedy
from .test_run_thread import WaitableCollector


class OwnCache(DynamicCache):
    """The only cache OwnCacheLlama accepts."""


class OwnCacheLlama(LlamaForCausalLM):
    """A causal LM that builds and accepts only its own cache and takes no attention hooks
    (as remote-code models with caches of their own: chatglm2/3)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def forward(self, input_ids: Any = None, cache: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if (cache is not None and not isinstance(cache, OwnCache)) or STEP_KWARG in kwargs:
            raise TypeError("this model keeps a cache of its own")
        if cache is None and kwargs.get("use_cache", True):
            cache = OwnCache(config=self.config)
        return super().forward(input_ids=input_ids, cache=cache, **kwargs)


@pytest.fixture(scope="module")
def tiny_t5(tiny_tokenizer: PreTrainedTokenizerBase) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tiny_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, eos_token_id=2, pad_token_id=0, n_positions=256)
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def own_cache_llama(tiny_tokenizer: PreTrainedTokenizerBase) -> OwnCacheLlama:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=2, pad_token_id=0)
    return OwnCacheLlama(config).eval()


def _host(model: Any, tokenizer: PreTrainedTokenizerBase, **overrides: object) -> EngineHost:
    return EngineHost(engine_config(**overrides), test_loader=lambda config: (model, tokenizer))


def _run(engine: Any, collector: WaitableCollector, request_id: str, sampling: SamplingParams,
         prompt: str = "The capital of Italy is") -> None:
    result = engine.add_requests([(GenerationRequest(request_id, prompt=prompt, sampling=sampling),
                                   collector.sink(request_id))])[0]
    assert isinstance(result, int), result
    collector.wait_for(lambda: collector.done(request_id))


def test_the_host_picks_our_engine_for_a_model_it_can_batch(tiny_model: Any, tiny_tokenizer: Any) -> None:
    host = _host(tiny_model, tiny_tokenizer)
    try:
        host.start()
        assert host.kind == "ours"
    finally:
        host.stop()


@pytest.mark.parametrize("which", ["tiny_t5", "own_cache_llama"])
def test_a_model_our_engine_cannot_batch_streams_on_the_fallback(which: str, request: pytest.FixtureRequest,
                                                                  tiny_tokenizer: Any) -> None:
    model = request.getfixturevalue(which)
    host = _host(model, tiny_tokenizer, stream_interval=1)
    try:
        engine = host.start()
        assert host.kind == "fallback"
        collector = WaitableCollector()
        _run(engine, collector, "r", greedy(6, ignore_eos=True))
    finally:
        host.stop()
    events = collector.events["r"]
    assert len(events) == 6, "one event per token"
    assert [e.finish_reason for e in events] == [None] * 5 + [FinishReason.LENGTH]
    assert sum(e.num_output_tokens for e in events) == 6
    tokens = collector.tokens("r")
    # The same tokens as transformers' own greedy generate on the same model.
    prompt_ids = torch.tensor([tiny_tokenizer("The capital of Italy is").input_ids])
    with torch.no_grad():
        out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=False,
                             max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    expected = out[0, (1 if model.config.is_encoder_decoder else prompt_ids.shape[1]):].tolist()
    assert tokens == expected
    assert collector.text("r") == tiny_tokenizer.decode(tokens, skip_special_tokens=True)


def test_why_our_engine_refuses_a_model_is_its_forward_error(own_cache_llama: Any, tiny_model: Any) -> None:
    assert cache_rejection(tiny_model) is None
    assert "cache of its own" in (cache_rejection(own_cache_llama) or "")


def test_fallback_honours_seeds_stop_strings_and_logprobs(tiny_t5: Any, tiny_tokenizer: Any) -> None:
    engine = FallbackEngine(tiny_t5, tiny_tokenizer, engine_config())
    try:
        collector = WaitableCollector()
        seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True)
        _run(engine, collector, "a", seeded)
        _run(engine, collector, "b", seeded)
        assert collector.tokens("a") == collector.tokens("b")
        full = collector.text("a")
        assert len(full) > 2
        stop = full[1:3]
        _run(engine, collector, "s", SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True,
                                                    stop=(stop,)))
        assert collector.finish("s") is FinishReason.STOP
        assert collector.text("s") == full[:full.index(stop)]
        _run(engine, collector, "l", greedy(4, ignore_eos=True, logprobs=2))
        entries = [lp for e in collector.events["l"] for lp in (e.logprobs or ())]
        assert [lp.sampled.token_id for lp in entries] == collector.tokens("l")
        assert all(lp.sampled.rank == 1 and len(lp.top) == 2 for lp in entries)
    finally:
        engine.stop()
        engine.join()


def test_abort_stops_a_running_generation_and_frees_its_worker(tiny_t5: Any, tiny_tokenizer: Any) -> None:
    engine = FallbackEngine(tiny_t5, tiny_tokenizer, engine_config(fallback_concurrency=1))
    started = threading.Event()
    collector = WaitableCollector()
    original = collector.sink

    def sink(request_id: str) -> Any:
        inner = original(request_id)

        def receive(event: Any) -> None:
            started.set()
            inner(event)
        return receive

    try:
        long = GenerationRequest("long", prompt="Hello world", sampling=greedy(200, ignore_eos=True))
        assert isinstance(engine.add_requests([(long, sink("long"))])[0], int)
        assert started.wait(30)
        engine.abort("long")
        collector.wait_for(lambda: collector.done("long"))
        assert collector.finish("long") is FinishReason.ABORT
        assert len(collector.tokens("long")) < 200
        _run(engine, collector, "next", greedy(3, ignore_eos=True))  # the only worker is free again
        assert collector.finish("next") is FinishReason.LENGTH
        deadline = time.monotonic() + 30
        while engine.stats.running and time.monotonic() < deadline:  # the worker ends after the event
            time.sleep(0.01)
        assert engine.stats.running == 0 and engine.stats.output_tokens >= 3
    finally:
        engine.stop()
        engine.join()


def test_fallback_refuses_what_does_not_fit(tiny_t5: Any, tiny_tokenizer: Any) -> None:
    engine = FallbackEngine(tiny_t5, tiny_tokenizer, engine_config(fallback_concurrency=1, max_queue_size=0))
    try:
        too_long = GenerationRequest("x", prompt="Hello", sampling=greedy(10_000))
        assert isinstance(engine.add_requests([(too_long, lambda e: None)])[0], ContextTooLong)
        schema = SamplingParams(max_tokens=5, structured=StructuredOutput("json_object"))
        refused = engine.add_requests([(GenerationRequest("j", prompt="Hello", sampling=schema), lambda e: None)])[0]
        assert isinstance(refused, InvalidRequest) and "structured outputs" in str(refused), "a 400, not ignored"
        slow = GenerationRequest("a", prompt="Hello", sampling=greedy(200, ignore_eos=True))
        again = GenerationRequest("b", prompt="Hello", sampling=greedy(2))
        results = engine.add_requests([(slow, lambda e: None), (again, lambda e: None)])
        assert isinstance(results[0], int) and isinstance(results[1], EngineOverloaded)
    finally:
        engine.stop()
        engine.join()


def test_chat_messages_go_through_the_chat_template(tiny_t5: Any, tiny_tokenizer: Any) -> None:
    engine = FallbackEngine(tiny_t5, tiny_tokenizer, engine_config())
    try:
        request = GenerationRequest("m", messages=({"role": "user", "content": "Hello"},))
        ids = engine.tokenize(request)
        assert tiny_tokenizer.decode(ids).startswith("<|im_start|>user\nHello<|im_end|>")
    finally:
        engine.stop()
        engine.join()
