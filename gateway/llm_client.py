"""The contract between the HTTP layer and whatever generates text.

Routers depend only on this module, so unit tests can drive them with a fake client and
`triton_client.TritonLLMClient` stays the one place that knows about Triton.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ModelCard:
    """One served name."""

    id: str
    """The name clients use (the Triton model name or one of its aliases)."""
    triton_model: str
    """The Triton model it maps to."""
    context_length: int | None


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; None (or empty) means the backend's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationInput:
    """One generation request; exactly one of `prompt` and `messages` is set."""

    model: str
    """The Triton model name."""
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    """Forwarded to Triton as the request id, for correlating logs."""


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


class LLMClient(Protocol):
    """What the gateway needs from a text-generation service."""

    async def list_models(self) -> list[ModelCard]:
        """Every served name, aliases included. Raises `UpstreamError`."""
        ...

    def generate(self, inp: GenerationInput) -> AsyncIterator[GenerationChunk]:
        """Stream the generation; the last chunk has a `finish_reason`.

        Raises `UpstreamError`. Closing the iterator early (or cancelling the task that
        iterates it) must stop the generation upstream.
        """
        ...

    async def is_ready(self) -> bool:
        """True when the service can take requests."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
