"""The contract between the HTTP layer and whatever generates text.

Routers depend only on this module, so unit tests can drive them with a fake client and
`triton_client.TritonLLMClient` stays the one place that knows about Triton.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from chatllm_wire import WireSampling

ModelKind = Literal["generate", "embed"]


@dataclass(frozen=True)
class ModelCard:
    """One served name."""

    id: str
    """The name clients use (the Triton model name or one of its aliases)."""
    triton_model: str
    """The Triton model it maps to."""
    context_length: int | None
    kind: ModelKind = "generate"
    """What the model serves: text generation (chat, completions) or embeddings."""
    capacity: int | None = None
    """Requests one server takes for this model before it refuses (running + queued over
    all its instances), when its config says; None: unknown, no limit applied."""
    tool_call_parser: str = "hermes"
    """How tool calls are read from answers to tool_choice "auto" (gateway/tools.py)."""
    reasoning_parser: str = ""
    """"think": `<think>...</think>` becomes `reasoning_content`; empty: none."""
    conv_template: str = ""
    """FastChat conversation template name for FastChat's clients (`conv_template` in
    config.pbtxt); empty: ChatML."""
    engine: str | None = None
    """What generates behind it, from its config: "ours", "fallback" or "vllm" (chatllm models)."""
    inputs: frozenset[str] | None = None
    """The optional request inputs it takes (chatllm_wire names: `tools`,
    `chat_template_kwargs`, `return_logprobs`, `count_tokens_only`); None: unknown, every one
    assumed."""

    def takes(self, name: str) -> bool:
        """Whether the model takes the optional input `name` (a chatllm_wire name)."""
        return self.inputs is None or name in self.inputs


SamplingParams = WireSampling
"""Sampling settings (the wire contract's own type); None (or empty) means the backend's default."""


@dataclass(frozen=True)
class GenerationInput:
    """One generation request; exactly one of `prompt` and `messages` is set."""

    model: str
    """The Triton model name."""
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: tuple[dict[str, Any], ...] | None = None
    """OpenAI tool definitions for the model's chat template."""
    chat_template_kwargs: dict[str, Any] | None = None
    request_id: str = ""
    """Forwarded to Triton as the request id, for correlating logs."""
    replayable: bool = False
    """Nobody has seen any of the output until the generation is complete (a non-streaming
    answer): a server-side failure, even mid-generation, may run it again elsewhere."""


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, log-probability and the most likely tokens there."""

    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()
    """Most likely first; may hold one more than asked for (when the sampled token is not
    among the N most likely, backends add it)."""


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of generated text."""

    text: str
    """New text since the previous chunk."""
    finish_reason: str | None
    """Set on the last chunk only: "stop", "length" or "abort"."""
    num_input_tokens: int | None
    """Prompt tokens, when the backend reports them (at least on the first chunk)."""
    num_output_tokens: int
    """Tokens in this chunk; the caller sums them."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """The chunk's tokens, when logprobs were asked for."""


@dataclass(frozen=True)
class EmbeddingResult:
    """The vectors of several texts, in input order."""

    vectors: list[list[float]]
    prompt_tokens: int
    """Tokens of all texts together (after any truncation)."""


class LLMClient(Protocol):
    """What the gateway needs from a text-generation service."""

    async def list_models(self) -> list[ModelCard]:
        """Every served name, aliases included. Raises `UpstreamError`."""
        ...

    def generate(self, inp: GenerationInput) -> AsyncIterator[GenerationChunk]:
        """Stream the generation; the last chunk has a `finish_reason`.

        Raises `GatewayError` (`UpstreamError` for what the backend reports). Closing the
        iterator early (or cancelling the task that
        iterates it) must stop the generation upstream.
        """
        ...

    async def count_tokens(self, model: str, prompt: str, request_id: str = "") -> int:
        """Tokens of `prompt` (plain text, no chat template) for the Triton model `model`.

        Raises `GatewayError` (400 when the model cannot count).
        """
        ...

    async def embed(
        self, model: str, texts: Sequence[str], request_id: str = ""
    ) -> EmbeddingResult:
        """Embed `texts` with the Triton embedding model `model`. Raises `GatewayError`."""
        ...

    async def is_ready(self) -> bool:
        """True when the service can take requests."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
