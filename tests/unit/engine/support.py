"""Helpers shared by the engine tests: an event-collecting sink, a synchronous drain loop and
reference generations from `model.generate`."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.engine import LLMEngine
from chatllm_engine.errors import EngineError
from chatllm_engine.types import FinishReason, GenerationRequest, SamplingParams, TokenEvent

from .conftest import engine_config

# Prompts of different token lengths; with the tiny random model, greedy decoding of these runs
# for a while before it emits EOS (tests that depend on that assert it first).
PROMPTS = (
    "Hello world",
    "The capital of Italy is",
    "def add(a, b):",
    "I am fine",
    "Paris. The",
    "thank you",
    "Hello world, how are you today? I am fine, thank you.",
    "你好，世界",
)


class Collector:
    """A sink factory: every event (or error) of every request, in arrival order."""

    def __init__(self) -> None:
        self.events: dict[str, list[TokenEvent]] = defaultdict(list)
        self.errors: dict[str, list[EngineError]] = defaultdict(list)

    def sink(self, request_id: str) -> Callable[[TokenEvent | EngineError], None]:
        def receive(event: TokenEvent | EngineError) -> None:
            if isinstance(event, EngineError):
                self.errors[request_id].append(event)
            else:
                assert event.request_id == request_id
                self.events[request_id].append(event)
        return receive

    def tokens(self, request_id: str) -> list[int]:
        return [t for e in self.events[request_id] for t in e.token_ids]

    def text(self, request_id: str) -> str:
        return "".join(e.text for e in self.events[request_id])

    def finish(self, request_id: str) -> FinishReason | None:
        events = self.events[request_id]
        return events[-1].finish_reason if events else None

    def finished_events(self, request_id: str) -> list[TokenEvent]:
        return [e for e in self.events[request_id] if e.finished]


def make_engine(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **overrides: object) -> LLMEngine:
    return LLMEngine(model, tokenizer, engine_config(**overrides))


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


def add(engine: LLMEngine, collector: Collector, request_id: str, prompt: str,
        sampling: SamplingParams) -> int:
    return engine.add_request(GenerationRequest(request_id, prompt=prompt, sampling=sampling),
                              collector.sink(request_id))


def drain(engine: LLMEngine, after_step: Callable[[LLMEngine], None] | None = None,
          max_steps: int = 10_000) -> int:
    """Step until the engine is idle; returns the number of steps."""
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
        if after_step is not None:
            after_step(engine)
        assert steps < max_steps, "the engine did not finish its work"
    return steps


def run_alone(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
              sampling: SamplingParams, **config: object) -> Collector:
    """One request on a fresh engine, run to completion."""
    engine = make_engine(model, tokenizer, **config)
    collector = Collector()
    add(engine, collector, "only", prompt, sampling)
    drain(engine)
    return collector


def reference_greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                     max_new_tokens: int, stop_at_eos: bool = True) -> list[int]:
    """Greedy continuation by transformers' own `generate`, one sequence, no padding."""
    ids = torch.tensor([tokenizer(prompt).input_ids])
    extra = {} if stop_at_eos else {"eos_token_id": None}
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=0, **extra)
    return out[0, ids.shape[1]:].tolist()


def first_new_token_at(tokens: list[int], start: int) -> int:
    """Index >= start of the first token that does not occur earlier in `tokens`."""
    for index in range(start, len(tokens)):
        if tokens[index] not in tokens[:index]:
            return index
    raise AssertionError(f"no fresh token after index {start} in {tokens}")


@dataclass(frozen=True)
class EosSetup:
    """A copy of the tiny model that declares one of its own greedy tokens EOS."""

    model: PreTrainedModel
    prompt: str
    reference: list[int]  # greedy output of the original model, ignoring every EOS
    eos_index: int  # where the declared EOS first appears in `reference`

    @property
    def eos(self) -> int:
        return self.reference[self.eos_index]


def make_eos_setup(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                   clean_text_before: bool = False) -> EosSetup:
    """`clean_text_before`: pick an EOS position where the text before it ends in a whole character."""
    reference = reference_greedy(model, tokenizer, prompt, 30, stop_at_eos=False)
    assert tokenizer.eos_token_id not in reference[:10], "precondition: no natural EOS early on"
    index = first_new_token_at(reference, 4)
    while clean_text_before and tokenizer.decode(reference[:index]).endswith("\ufffd"):
        index = first_new_token_at(reference, index + 1)
    eos_model = copy.deepcopy(model)
    eos_model.generation_config.eos_token_id = [tokenizer.eos_token_id, reference[index]]
    return EosSetup(eos_model, prompt, reference, index)
