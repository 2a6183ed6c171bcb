"""Pydantic models of the OpenAI (and FastChat) HTTP API: the gateway's only pydantic.

Requests validate ranges here, so a bad value is a 400 naming the field before any work.
Response models drop `usage` (and empty delta fields) when unset, as OpenAI does.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import chatllm_wire as wire
from chatllm_wire import MAX_LOGPROBS

Role = Literal["system", "user", "assistant", "developer", "tool"]
MAX_EMBEDDING_INPUTS = 2048


def _sampling_field(name: str) -> Any:
    """An optional field with the bounds of a sampling parameter in the wire contract
    (chatllm_wire)."""
    spec = wire.SAMPLING_PARAMS[name]
    bounds: dict[str, Any] = {}
    if spec.low is not None:
        bounds["gt" if spec.low_open else "ge"] = spec.low
    if spec.high is not None:
        bounds["le"] = spec.high
    return Field(default=None, **bounds)


def _omit_none(value: object) -> bool:
    return value is None


class TextPart(BaseModel):
    """One part of a list-form message content; only text is supported."""

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"
    """JSON text, as OpenAI sends it."""


class ToolCall(BaseModel):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """An input message; other OpenAI fields (`name`, ...) are ignored."""

    role: Role
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    """An assistant's earlier tool calls."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""

    def text(self) -> str:
        """The content as one string (text parts joined by newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingRequest(BaseModel):
    """Fields shared by every generation endpoint; ranges come from the wire contract."""

    model: str = Field(min_length=1)
    max_tokens: int | None = _sampling_field("max_tokens")
    temperature: float | None = _sampling_field("temperature")
    top_p: float | None = _sampling_field("top_p")
    top_k: int | None = _sampling_field("top_k")
    """vLLM/FastChat extension; -1 and 0 mean disabled."""
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = Field(default=None, max_length=wire.MAX_STOP_STRINGS)
    seed: int | None = Field(default=None, ge=wire.INT64_MIN, le=-wire.INT64_MIN - 1)
    presence_penalty: float | None = _sampling_field("presence_penalty")
    frequency_penalty: float | None = _sampling_field("frequency_penalty")
    repetition_penalty: float | None = _sampling_field("repetition_penalty")
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs and its older
    # guided_* fields (gateway/structured.py turns them into one constraint).
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple, empty strings dropped (chatllm_wire's normalisation)."""
        return wire.normalize_stop(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedToolChoiceFunction


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise ValueError("messages must contain at least one message")
        return messages

    def effective_max_tokens(self) -> int | None:
        """`max_completion_tokens` wins over the deprecated `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


class FastChatCompletionRequest(ChatCompletionRequest):
    """FastChat's `/api/v1/chat/completions`: `messages` may be one plain string."""

    @model_validator(mode="before")
    @classmethod
    def _string_messages(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("messages"), str):
            return {**data, "messages": [{"role": "user", "content": data["messages"]}]}
        return data


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---- responses ------------------------------------------------------------------------


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobEntry(TopLogprobEntry):
    top_logprobs: list[TopLogprobEntry]


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprobEntry] | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, one entry per token."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = Field(default=None, exclude_if=_omit_none)
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=_omit_none)


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaFunctionCall(BaseModel):
    name: str | None = Field(default=None, exclude_if=_omit_none)
    arguments: str | None = Field(default=None, exclude_if=_omit_none)


class DeltaToolCall(BaseModel):
    """A piece of a streamed tool call: index, id, type and name once, then arguments."""

    index: int
    id: str | None = Field(default=None, exclude_if=_omit_none)
    type: Literal["function"] | None = Field(default=None, exclude_if=_omit_none)
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_omit_none)
    content: str | None = Field(default=None, exclude_if=_omit_none)
    reasoning_content: str | None = Field(default=None, exclude_if=_omit_none)
    tool_calls: list[DeltaToolCall] | None = Field(default=None, exclude_if=_omit_none)


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = Field(default=None, exclude_if=_omit_none)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = Field(default=None, exclude_if=_omit_none)


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tritonchat"
    root: str
    parent: str | None = None
    context_length: int | None = None
    max_model_len: int | None = None
    engine: str | None = Field(default=None, exclude_if=_omit_none)
    """chatllm models: "ours" (continuous batching), "fallback" (per-request) or "vllm"."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# ---- embeddings ----------------------------------------------------------------------


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`; `model` may come from the path instead (FastChat's
    `/v1/engines/{model}/embeddings`)."""

    model: str | None = Field(default=None, min_length=1)
    input: str | list[str]
    """Text or texts; token arrays (OpenAI also takes them) are refused, as token ids of
    another tokenizer mean nothing to these models."""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input may hold at most {MAX_EMBEDDING_INPUTS} texts")
        if any(not item for item in items):
            raise ValueError("input must not contain empty strings")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """Floats, or base64 of little-endian float32 when `encoding_format` is "base64"."""


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# ---- FastChat's token check -----------------------------------------------------------


class TokenCheckItem(BaseModel):
    model: str = Field(min_length=1)
    prompt: str
    max_tokens: int = Field(ge=0)


class TokenCheckRequest(BaseModel):
    """FastChat's `POST /api/v1/token_check`."""

    prompts: list[TokenCheckItem] = Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)


class TokenCheckResult(BaseModel):
    fits: bool
    token_count: int = Field(serialization_alias="tokenCount")
    """FastChat's field names are camelCase."""
    context_length: int | None = Field(serialization_alias="contextLength")


class TokenCheckResponse(BaseModel):
    prompts: list[TokenCheckResult]


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body; what `GatewayError.to_dict` produces."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorInfo
