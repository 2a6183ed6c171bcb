"""Plain data exchanged between the Triton adapter and the engine."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatllm_wire import StructuredOutput

from .errors import EngineError


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; defaults follow vLLM/OpenAI (temperature 1 = plain sampling)."""

    max_tokens: int | None = None  # None: what the context (and KV budget) leaves
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # None: off; N: the sampled token's logprob and the N most likely
    structured: StructuredOutput | None = None  # the output must match this grammar (constraints.py)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability under the model's distribution at one position."""

    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token
    decoded_token: str


@dataclass(frozen=True)
class TokenLogprobs:
    """What `SamplingParams.logprobs` asks for at one output position."""

    sampled: Logprob
    top: tuple[Logprob, ...]  # the N most likely tokens, most likely first


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Exactly one of `prompt`, `messages`, `prompt_token_ids` is set."""

    request_id: str
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: tuple[dict[str, Any], ...] | None = None  # OpenAI tool definitions for the chat template
    chat_template_kwargs: dict[str, Any] | None = None  # extra variables for the chat template


@dataclass(frozen=True)
class TokenEvent:
    """New output of one request: text delta since the last event, and the end if reached."""

    request_id: str
    text: str
    num_output_tokens: int  # tokens covered by this event
    num_input_tokens: int
    finish_reason: FinishReason | None = None
    token_ids: tuple[int, ...] = ()
    # When the request asked for logprobs: one entry per output token of this event that is
    # text (stop tokens such as EOS have none); otherwise None.
    logprobs: tuple[TokenLogprobs, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


EventSink = Callable[[TokenEvent | EngineError], None]
"""Where an engine sends a request's events, and its error if it fails after being queued."""
