"""`LLMClient` over Triton's gRPC API: the only module that imports tritonclient.

Control calls (repository index, model configs, readiness) go through
`tritonclient.grpc.aio.InferenceServerClient`. Generation uses the `ModelStreamInfer`
bidirectional stream directly on the service stub, because the aio client's
`stream_infer` cannot ask for `triton_enable_empty_final_response` (a reserved
parameter), and without it a model that ends with a bare final flag would leave us
waiting. Cancelling the stream's call (`call.cancel()`, what the aio client's
`stream_infer(...).cancel()` does) makes Triton cancel the request, so the backend sees
`is_cancelled()`.

Embedding models are plain (not decoupled) models; they are called with the aio client's
unary `infer`, in requests of at most their `max_batch_size` texts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.grpc.aio import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

import chatllm_wire as wire
from gateway.errors import ModelNotFoundError, UpstreamError, upstream_error
from gateway.llm_client import (
    EmbeddingResult,
    GenerationChunk,
    GenerationInput,
    ModelCard,
    ModelKind,
    TokenLogprob,
    TopLogprob,
)

logger = logging.getLogger(__name__)

ENGINE_QUERY_TIMEOUT_S = 1.0
"""Bound on asking a model which engine it runs (a model list never waits longer for it)."""

OUTPUTS = (wire.TEXT_OUTPUT, wire.FINISH_REASON, wire.NUM_INPUT_TOKENS, wire.NUM_OUTPUT_TOKENS)
_FINAL = "triton_final_response"


@dataclass(frozen=True)
class TritonModel:
    """What the gateway needs to know about one Triton model it serves."""

    name: str
    batched: bool
    """`max_batch_size > 0`: inputs carry a batch dimension ([1, 1] instead of [1])."""
    aliases: tuple[str, ...]
    context_length: int | None
    kind: ModelKind = "generate"
    """"generate": a decoupled LLM (vllm_backend tensors); "embed": `text` -> `embedding`."""
    max_batch_size: int = 0
    inputs: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()
    tool_call_parser: str = "hermes"
    reasoning_parser: str = ""

    capacity: int | None = None
    """Running + queued requests the server takes before refusing (chatllm's max_num_seqs
    + max_queue_size, times its instances); None when the config does not say."""
    conv_template: str = ""

    engine: str | None = None
    """chatllm's `engine` parameter ("ours" when unset); None for other backends."""

    def cards(self) -> list[ModelCard]:
        """One card per served name: the name, then its aliases."""
        names = dict.fromkeys((self.name, *self.aliases))
        return [
            ModelCard(
                n,
                self.name,
                self.context_length,
                self.kind,
                capacity=self.capacity,
                tool_call_parser=self.tool_call_parser,
                reasoning_parser=self.reasoning_parser,
                conv_template=self.conv_template,
                engine=self.engine,
                inputs=self.inputs,
            )
            for n in names
        ]


def parse_model_config(name: str, config: dict[str, Any]) -> TritonModel | None:
    """Read a model config (JSON form); None for models the gateway cannot serve.

    Decoupled models are LLMs; plain models with a `text` input and an `embedding` output
    are embedding models.
    """
    inputs = frozenset(str(t.get("name", "")) for t in config.get("input", []))
    outputs = frozenset(str(t.get("name", "")) for t in config.get("output", []))
    kind: ModelKind
    if config.get("model_transaction_policy", {}).get("decoupled", False):
        kind = "generate"
    elif "text" in inputs and "embedding" in outputs:
        kind = "embed"
    else:
        return None
    params = config.get("parameters", {})

    def param(key: str) -> str:
        return str(params.get(key, {}).get("string_value", "")).strip()

    aliases = tuple(a.strip() for a in param("served_model_names").split(",") if a.strip())
    context_length: int | None = None
    if param("max_model_len"):
        try:
            context_length = int(param("max_model_len"))
        except ValueError:
            logger.warning(
                "model %s: max_model_len %r is not an integer", name, param("max_model_len")
            )
    max_batch_size = int(config.get("max_batch_size", 0))
    engine = param("engine") or ("ours" if config.get("backend") == "chatllm" else None)
    return TritonModel(
        capacity=_capacity(name, config, param("max_num_seqs"), param("max_queue_size")),
        name=name,
        batched=max_batch_size > 0,
        aliases=aliases,
        context_length=context_length,
        kind=kind,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        tool_call_parser=param("tool_call_parser") or "hermes",
        reasoning_parser=param("reasoning_parser"),
        conv_template=param("conv_template"),
        engine=engine,
    )


def _capacity(name: str, config: dict[str, Any], seqs: str, queued: str) -> int | None:
    """max_num_seqs + max_queue_size per instance, times the instances; None if unknown."""
    if not seqs or not queued:
        return None
    try:
        per_instance = int(seqs) + int(queued)
    except ValueError:
        logger.warning("model %s: max_num_seqs/max_queue_size are not integers", name)
        return None
    groups = config.get("instance_group") or [{}]
    instances = sum(max(int(g.get("count", 1) or 1), 1) for g in groups)
    return per_instance * instances


def build_request(inp: GenerationInput, *, batched: bool) -> service_pb2.ModelInferRequest:
    """The `ModelInferRequest` for one generation (vllm_backend-compatible tensors)."""
    request = service_pb2.ModelInferRequest(model_name=inp.model, id=inp.request_id)
    shape = [1, 1] if batched else [1]

    def add(name: str, value: str | bool) -> None:
        tensor = request.inputs.add(name=name, shape=shape)
        if isinstance(value, bool):
            tensor.datatype = "BOOL"
            tensor.contents.bool_contents.append(value)
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.append(value.encode("utf-8"))

    if inp.messages is not None:
        add(wire.MESSAGES, json.dumps(list(inp.messages), ensure_ascii=False))
    else:
        add(wire.TEXT_INPUT, inp.prompt or "")
    if inp.tools:
        add(wire.TOOLS, json.dumps(list(inp.tools), ensure_ascii=False))
    if inp.chat_template_kwargs:
        add(wire.CHAT_TEMPLATE_KWARGS, json.dumps(inp.chat_template_kwargs, ensure_ascii=False))
    add(wire.STREAM, True)
    add(wire.SAMPLING_PARAMETERS, inp.sampling.to_json())
    add(wire.EXCLUDE_INPUT_IN_OUTPUT, True)
    add(wire.RETURN_FINISH_REASON, True)
    add(wire.RETURN_NUM_INPUT_TOKENS, True)
    add(wire.RETURN_NUM_OUTPUT_TOKENS, True)
    if inp.sampling.logprobs is not None:
        add(wire.RETURN_LOGPROBS, True)
    for name in OUTPUTS:
        request.outputs.add(name=name)
    if inp.sampling.logprobs is not None:
        request.outputs.add(name=wire.LOGPROBS)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def build_count_request(
    model: str, prompt: str, request_id: str, *, batched: bool
) -> service_pb2.ModelInferRequest:
    """Ask the backend for the token count of `prompt` only (`count_tokens_only`)."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    shape = [1, 1] if batched else [1]
    text = request.inputs.add(name=wire.TEXT_INPUT, shape=shape, datatype="BYTES")
    text.contents.bytes_contents.append(prompt.encode("utf-8"))
    for name in (wire.COUNT_TOKENS_ONLY, wire.RETURN_NUM_INPUT_TOKENS):
        flag = request.inputs.add(name=name, shape=shape, datatype="BOOL")
        flag.contents.bool_contents.append(True)
    request.outputs.add(name=wire.NUM_INPUT_TOKENS)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


@dataclass(frozen=True)
class StreamResponse:
    """One decoded stream response."""

    text: str
    finish_reason: str | None
    num_input_tokens: int | None
    num_output_tokens: int | None
    final: bool
    logprobs: tuple[TokenLogprob, ...] = ()
    engine: str | None = None


def _strings(array: npt.NDArray[Any] | None) -> list[str]:
    if array is None:
        return []
    return [
        item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
        for item in array.reshape(-1)
    ]


def _ints(array: npt.NDArray[Any] | None) -> list[int]:
    return [] if array is None else [int(x) for x in array.reshape(-1)]


def parse_logprobs(payloads: list[str]) -> tuple[TokenLogprob, ...]:
    """The `logprobs` JSON (chatllm_wire) of several responses; `top` most likely first.
    Raises `UpstreamError` when it is malformed."""
    tokens: list[TokenLogprob] = []
    try:
        for payload in payloads:
            for position in wire.parse_logprobs(payload):
                ranked = sorted(position, key=lambda e: e.rank)
                tokens.append(TokenLogprob(
                    token=position[0].decoded_token, logprob=position[0].logprob,
                    top=tuple(TopLogprob(e.decoded_token, e.logprob) for e in ranked)))
    except wire.WireError as exc:
        raise UpstreamError(500, exc.message, "server_error") from None
    return tuple(tokens)


def decode_response(response: service_pb2.ModelInferResponse) -> StreamResponse:
    """Outputs of one response; the final response may have none."""
    final = _FINAL in response.parameters and response.parameters[_FINAL].bool_param
    if not response.outputs:
        return StreamResponse("", None, None, None, final)
    result = InferResult(response)
    reasons = [r for r in _strings(result.as_numpy(wire.FINISH_REASON)) if r]
    inputs = _ints(result.as_numpy(wire.NUM_INPUT_TOKENS))
    outputs = _ints(result.as_numpy(wire.NUM_OUTPUT_TOKENS))
    return StreamResponse(
        text="".join(_strings(result.as_numpy(wire.TEXT_OUTPUT))),
        finish_reason=reasons[0] if reasons else None,
        num_input_tokens=inputs[0] if inputs else None,
        num_output_tokens=sum(outputs) if outputs else None,
        final=final,
        logprobs=parse_logprobs(_strings(result.as_numpy(wire.LOGPROBS))),
        engine=next(iter(_strings(result.as_numpy(wire.ENGINE))), None),
    )


def _from_exception(exc: InferenceServerException) -> UpstreamError:
    return upstream_error(str(exc.message() or exc), exc.status())


def _from_rpc_error(exc: grpc.aio.AioRpcError) -> UpstreamError:
    return upstream_error(exc.details() or str(exc.code()), exc.code().name)


async def _one(
    request: service_pb2.ModelInferRequest,
) -> AsyncIterator[service_pb2.ModelInferRequest]:
    # Ending the request stream half-closes the call; Triton still answers in full.
    yield request


class TritonLLMClient:
    """Generation and model discovery on one Triton server (`url`: its gRPC host:port).

    Connections are opened on first use, inside the running event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        request_timeout_s: float | None = None,
        control_timeout_s: float = 10.0,
    ) -> None:
        if not url:
            raise ValueError("a Triton gRPC URL is required")
        self._url = url
        self._request_timeout_s = request_timeout_s
        self._control_timeout_s = control_timeout_s
        self._admin: InferenceServerClient | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        # Owner: the event loop. Refreshed by list_models, filled lazily by generate.
        self._models: dict[str, TritonModel] = {}
        self._engines: dict[TritonModel, str] = {}  # list_models asks once per model config

    def _control(self) -> InferenceServerClient:
        if self._admin is None:
            self._admin = InferenceServerClient(self._url)
        return self._admin

    def _inference_stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self._url,
                options=[
                    ("grpc.max_send_message_length", 2**31 - 1),
                    ("grpc.max_receive_message_length", 2**31 - 1),
                ],
            )
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def list_models(self) -> list[ModelCard]:
        admin = self._control()
        try:
            index = await admin.get_model_repository_index(
                as_json=True, client_timeout=self._control_timeout_s
            )
        except InferenceServerException as exc:
            raise _from_exception(exc) from None
        names = sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})
        found = await asyncio.gather(*(self._fetch_model(n, missing_ok=True) for n in names))
        self._models = {m.name: m for m in found if m is not None}
        self._engines = {m: e for m, e in self._engines.items() if self._models.get(m.name) == m}
        served = await asyncio.gather(*(self._serving_engine(m) for m in self._models.values()))
        return [card for model in served for card in model.cards()]

    async def _serving_engine(self, model: TritonModel) -> TritonModel:
        """`model` with the engine it runs: a chatllm model configured for "ours" may have
        chosen the per-request fallback on load, which its `engine` output tells."""
        if model.engine != "ours" or wire.ENGINE not in model.outputs:
            return model
        if model not in self._engines:
            try:
                engine = await asyncio.wait_for(self._ask_engine(model), ENGINE_QUERY_TIMEOUT_S)
            except (UpstreamError, asyncio.TimeoutError) as exc:  # asked again at the next listing
                logger.info("model %s did not say which engine it runs: %r", model.name, exc)
            else:
                if engine:
                    self._engines[model] = engine
        return replace(model, engine=self._engines.get(model, model.engine))

    async def _ask_engine(self, model: TritonModel) -> str | None:
        request = build_count_request(model.name, "", "engine", batched=model.batched)
        request.outputs.add(name=wire.ENGINE)
        engine: str | None = None
        async with aclosing(self._responses(request)) as responses:
            async for response in responses:
                engine = response.engine or engine
        return engine

    async def _fetch_model(self, name: str, *, missing_ok: bool = False) -> TritonModel | None:
        try:
            config = await self._control().get_model_config(
                name, as_json=True, client_timeout=self._control_timeout_s
            )
        except InferenceServerException as exc:
            error = _from_exception(exc)
            if missing_ok and error.status_code == 404:
                return None  # unloaded between the index and this call
            raise error from None
        return parse_model_config(name, config.get("config", {}))

    async def _layout(self, name: str) -> TritonModel:
        """How to shape requests for `name` on this server (batch dimension, batch size).

        Whether the model exists, what it serves and which inputs it takes is the caller's
        business (the registry's `ModelCard`): this only reads the config it needs, from the
        last model list, or from the server for a model not listed yet.
        """
        model = self._models.get(name)
        if model is None:
            model = await self._fetch_model(name)
            if model is None:
                raise ModelNotFoundError(name)
            self._models[name] = model
        return model

    async def _responses(
        self, request: service_pb2.ModelInferRequest
    ) -> AsyncGenerator[StreamResponse, None]:
        """The decoded responses of one stream, up to and including the final one.

        Closing this iterator before the final response cancels the gRPC stream.
        """
        call = self._inference_stub().ModelStreamInfer(
            _one(request), timeout=self._request_timeout_s
        )
        finished = False
        try:
            async for message in call:
                if message.error_message:
                    finished = True
                    raise upstream_error(message.error_message)
                response = decode_response(message.infer_response)
                finished = response.final
                yield response
                if finished:
                    return
        except grpc.aio.AioRpcError as exc:
            finished = True
            raise _from_rpc_error(exc) from None
        finally:
            if not finished:
                logger.info("request %s: cancelling the Triton stream", request.id)
                call.cancel()
        raise UpstreamError(
            500, "Triton closed the stream before the final response", "server_error"
        )

    async def generate(self, inp: GenerationInput) -> AsyncIterator[GenerationChunk]:
        """Stream one generation; closing the iterator cancels the gRPC stream."""
        model = await self._layout(inp.model)
        request = build_request(inp, batched=model.batched)
        finish_reason: str | None = None
        async with aclosing(self._responses(request)) as responses:
            async for response in responses:
                finish_reason = response.finish_reason or finish_reason
                # Older backends do not count tokens: one token per non-empty response.
                tokens = response.num_output_tokens
                if tokens is None:
                    tokens = 1 if response.text else 0
                if response.final:
                    yield GenerationChunk(
                        response.text,
                        finish_reason or "stop",
                        response.num_input_tokens,
                        tokens,
                        response.logprobs,
                    )
                    return
                if response.text or response.num_input_tokens is not None or response.logprobs:
                    yield GenerationChunk(
                        response.text, None, response.num_input_tokens, tokens, response.logprobs
                    )

    async def count_tokens(self, model: str, prompt: str, request_id: str = "") -> int:
        triton_model = await self._layout(model)
        request = build_count_request(model, prompt, request_id, batched=triton_model.batched)
        count: int | None = None
        async with aclosing(self._responses(request)) as responses:
            async for response in responses:
                if response.num_input_tokens is not None:
                    count = response.num_input_tokens
        if count is None:
            raise UpstreamError(500, f"model `{model}` returned no token count", "server_error")
        return count

    async def embed(
        self, model: str, texts: Sequence[str], request_id: str = ""
    ) -> EmbeddingResult:
        """One Triton request per `max_batch_size` texts, all sent at once (Triton batches
        them further with other clients' requests)."""
        triton_model = await self._layout(model)
        size = max(triton_model.max_batch_size, 1)
        parts = await asyncio.gather(
            *(
                self._embed_part(triton_model, texts[i : i + size], f"{request_id}-{i // size}")
                for i in range(0, len(texts), size)
            )
        )
        return EmbeddingResult(
            vectors=[vector for vectors, _ in parts for vector in vectors],
            prompt_tokens=sum(tokens for _, tokens in parts),
        )

    async def _embed_part(
        self, model: TritonModel, texts: Sequence[str], request_id: str
    ) -> tuple[list[list[float]], int]:
        shape = [len(texts), 1] if model.batched else [1]
        if not model.batched and len(texts) != 1:
            raise ValueError("an unbatched model takes one text per request")
        text = InferInput("text", shape, "BYTES")
        text.set_data_from_numpy(
            np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(shape)
        )
        outputs = [InferRequestedOutput("embedding")]
        if "num_input_tokens" in model.outputs:
            outputs.append(InferRequestedOutput("num_input_tokens"))
        try:
            result = await self._control().infer(
                model.name,
                [text],
                outputs=outputs,
                request_id=request_id,
                client_timeout=self._request_timeout_s,
            )
        except InferenceServerException as exc:
            raise _from_exception(exc) from None
        vectors = result.as_numpy("embedding")
        if vectors is None or vectors.size % len(texts):
            raise UpstreamError(
                500, f"model `{model.name}` returned no embedding per text", "server_error"
            )
        tokens = result.as_numpy("num_input_tokens")
        return vectors.reshape(len(texts), -1).tolist(), sum(_ints(tokens))

    async def is_ready(self) -> bool:
        try:
            ready = await self._control().is_server_ready(client_timeout=self._control_timeout_s)
            return bool(ready)
        except (InferenceServerException, grpc.RpcError) as exc:
            logger.info("Triton at %s is not ready: %s", self._url, exc)
            return False

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
