"""`TritonLLMClient` against an in-process fake of Triton's gRPC service.

The fake speaks the real protocol (grpc.aio server, Triton's protos), so this covers the
stream loop, error mapping and cancellation without a tritonserver.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2, service_pb2_grpc

import chatllm_wire as wire
from gateway.errors import UpstreamError
from gateway.llm_client import (
    GenerationChunk,
    GenerationInput,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)
from gateway.triton_client import TritonLLMClient

TIMEOUT_S = 5.0


def _bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _response(
    text: str | None, reason: str = "", final: bool = False, logprobs: str | None = None
) -> service_pb2.ModelStreamInferResponse:
    infer = service_pb2.ModelInferResponse(model_name="llm")
    infer.parameters["triton_final_response"].bool_param = final
    if text is not None:
        outputs = [
            ("text_output", "BYTES", _bytes([text])),
            ("finish_reason", "BYTES", _bytes([reason])),
            ("num_input_tokens", "UINT32", np.array([[4]], dtype=np.uint32).tobytes()),
            ("num_output_tokens", "UINT32", np.array([[1]], dtype=np.uint32).tobytes()),
        ]
        if logprobs is not None:
            outputs.append(("logprobs", "BYTES", _bytes([logprobs])))
        for name, dtype, raw in outputs:
            infer.outputs.add(name=name, datatype=dtype, shape=[1, 1])
            infer.raw_output_contents.append(raw)
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def _count_response(count: int) -> service_pb2.ModelStreamInferResponse:
    infer = service_pb2.ModelInferResponse(model_name="llm")
    infer.parameters["triton_final_response"].bool_param = True
    infer.outputs.add(name="num_input_tokens", datatype="UINT32", shape=[1, 1])
    infer.raw_output_contents.append(np.array([[count]], dtype=np.uint32).tobytes())
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def _tensor(name: str, dtype: str, dims: list[int]) -> mc.ModelInput:
    return {"name": name, "data_type": dtype, "dims": dims}


LOGPROBS = json.dumps([{"9": {"logprob": -0.5, "rank": 1, "decoded_token": "a "}}])


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers by the prompt: "words", "bare-final", "error", "hang", "no-final"."""

    def __init__(self) -> None:
        self.requests: list[service_pb2.ModelInferRequest] = []
        self.infer_requests: list[service_pb2.ModelInferRequest] = []
        self.cancelled = asyncio.Event()

    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=True)

    async def RepositoryIndex(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryIndexResponse:
        index = service_pb2.RepositoryIndexResponse()
        models = (
            ("llm", "READY"),
            ("plain", "READY"),
            ("loading", "LOADING"),
            ("llm", "READY"),
            ("embedder", "READY"),
        )
        for name, state in models:
            index.models.add(name=name, version="1", state=state)
        return index

    async def ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        if request.name == "llm":
            config = mc.ModelConfig(
                name="llm",
                max_batch_size=4,
                model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
                input=[
                    mc.ModelInput(name=n, data_type=mc.TYPE_BOOL, dims=[1])
                    for n in ("return_logprobs", "count_tokens_only")
                ],
                parameters={
                    "served_model_names": mc.ModelParameter(string_value="chat"),
                    "max_model_len": mc.ModelParameter(string_value="128"),
                },
            )
        elif request.name == "plain":
            config = mc.ModelConfig(name="plain", max_batch_size=4)
        elif request.name == "old-llm":  # declares none of our optional inputs
            config = mc.ModelConfig(
                name="old-llm", model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True)
            )
        elif request.name == "embedder":
            config = mc.ModelConfig(
                name="embedder",
                max_batch_size=2,
                input=[mc.ModelInput(name="text", data_type=mc.TYPE_STRING, dims=[1])],
                output=[
                    mc.ModelOutput(name="embedding", data_type=mc.TYPE_FP32, dims=[2]),
                    mc.ModelOutput(name="num_input_tokens", data_type=mc.TYPE_UINT32, dims=[1]),
                ],
            )
        else:
            message = f"Request for unknown model: '{request.name}' is not found"
            await context.abort(grpc.StatusCode.NOT_FOUND, message)
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        request = await anext(request_iterator)
        self.requests.append(request)
        prompt = request.inputs[0].contents.bytes_contents[0].decode()
        try:
            if any(t.name == "count_tokens_only" for t in request.inputs):
                yield _count_response(len(prompt.split()))
            elif prompt == "logprobs":
                yield _response("a ", logprobs=LOGPROBS)
                yield _response("", "stop", final=True, logprobs="[]")
            elif prompt == "words":
                yield _response("a ")
                yield _response("b", "length", final=True)
            elif prompt == "bare-final":
                yield _response("a ")
                yield _response("b", "stop")
                yield _response(None, final=True)
            elif prompt == "error":
                refusal = "[INVALID_ARG] prompt refused"
                yield service_pb2.ModelStreamInferResponse(error_message=refusal)
            elif prompt == "hang":
                yield _response("a ")
                await asyncio.Event().wait()
            elif prompt == "no-final":
                yield _response("a ")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: Any
    ) -> service_pb2.ModelInferResponse:
        """The embedder: each text becomes [its length, its batch size]; "busy" is refused
        as Triton refuses a request when the queue is full."""
        self.infer_requests.append(request)
        (_tensor,) = request.inputs  # exactly one input
        raw = request.raw_input_contents[0]
        texts, offset = [], 0
        while offset < len(raw):
            (size,) = struct.unpack_from("<I", raw, offset)
            texts.append(raw[offset + 4 : offset + 4 + size].decode())
            offset += 4 + size
        if "busy" in texts:
            message = f"[request id: {request.id}] Exceeds maximum queue size"
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        vectors = np.array([[len(t), len(texts)] for t in texts], dtype=np.float32)
        counts = np.array([[len(t.split())] for t in texts], dtype=np.uint32)
        response = service_pb2.ModelInferResponse(model_name="embedder", id=request.id)
        response.outputs.add(name="embedding", datatype="FP32", shape=list(vectors.shape))
        response.raw_output_contents.append(vectors.tobytes())
        response.outputs.add(name="num_input_tokens", datatype="UINT32", shape=list(counts.shape))
        response.raw_output_contents.append(counts.tobytes())
        return response


async def with_server(test: Callable[[TritonLLMClient, FakeTriton], Awaitable[None]]) -> None:
    server = grpc.aio.server()
    fake = FakeTriton()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = TritonLLMClient(f"127.0.0.1:{port}", request_timeout_s=TIMEOUT_S)
    try:
        await asyncio.wait_for(test(client, fake), TIMEOUT_S)
    finally:
        await client.close()
        await server.stop(None)


async def collect(
    client: TritonLLMClient, prompt: str, model: str = "llm"
) -> list[GenerationChunk]:
    inp = GenerationInput(model=model, prompt=prompt, sampling=SamplingParams(max_tokens=2))
    return [c async for c in client.generate(inp)]


def test_lists_ready_decoupled_models_with_aliases() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        cards = await client.list_models()
        assert [(c.id, c.triton_model, c.context_length, c.kind) for c in cards] == [
            ("embedder", "embedder", None, "embed"),
            ("llm", "llm", 128, "generate"),
            ("chat", "llm", 128, "generate"),
        ]
        assert await client.is_ready()

    asyncio.run(with_server(test))


def test_streams_until_the_final_response_and_shapes_inputs_for_batching() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        chunks = await collect(client, "words")
        assert chunks == [GenerationChunk("a ", None, 4, 1), GenerationChunk("b", "length", 4, 1)]
        assert list(fake.requests[0].inputs[0].shape) == [1, 1]  # max_batch_size > 0

    asyncio.run(with_server(test))


def test_an_empty_final_response_ends_the_stream_with_the_earlier_reason() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        chunks = await collect(client, "bare-final")
        assert "".join(c.text for c in chunks) == "a b"
        assert chunks[-1].finish_reason == "stop"
        assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)

    asyncio.run(with_server(test))


def test_a_stream_error_becomes_an_upstream_error() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, "error")
        assert (caught.value.status_code, caught.value.message) == (400, "prompt refused")

    asyncio.run(with_server(test))


def test_a_stream_closed_without_final_response_is_an_error() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, "no-final")
        assert caught.value.status_code == 500

    asyncio.run(with_server(test))


def test_unknown_model_is_404() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, "words", model="ghost")
        assert caught.value.status_code == 404

    asyncio.run(with_server(test))


def test_closing_the_iterator_cancels_the_grpc_stream() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        stream = client.generate(GenerationInput(model="llm", prompt="hang"))
        assert (await anext(stream)).text == "a "
        await stream.aclose()  # type: ignore[attr-defined]
        await fake.cancelled.wait()

    asyncio.run(with_server(test))


def test_unreachable_triton_is_503_and_not_ready() -> None:
    async def test() -> None:
        client = TritonLLMClient("127.0.0.1:1", request_timeout_s=2.0, control_timeout_s=2.0)
        try:
            assert not await client.is_ready()
            with pytest.raises(UpstreamError) as caught:
                await client.list_models()
            assert caught.value.status_code == 503
            assert caught.value.headers == {"Retry-After": "1"}
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S))


def test_logprobs_are_decoded_from_the_stream() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        inp = GenerationInput(model="llm", prompt="logprobs", sampling=SamplingParams(logprobs=1))
        chunks = [c async for c in client.generate(inp)]
        assert [c.logprobs for c in chunks] == [
            (TokenLogprob("a ", -0.5, (TopLogprob("a ", -0.5),)),),
            (),
        ]
        assert any(t.name == "return_logprobs" for t in fake.requests[0].inputs)

    asyncio.run(with_server(test))


def test_cards_carry_the_optional_inputs_a_model_takes() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        cards = {card.id: card for card in await client.list_models()}
        assert cards["llm"].takes(wire.RETURN_LOGPROBS) and cards["chat"].takes(wire.COUNT_TOKENS_ONLY)
        assert not cards["llm"].takes(wire.TOOLS)
        assert cards["embedder"].inputs == {"text"}

    asyncio.run(with_server(test))


def test_count_tokens_asks_for_the_count_only() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        assert await client.count_tokens("llm", "three little words", "tc-1") == 3
        (request,) = fake.requests
        assert request.id == "tc-1"
        assert {t.name for t in request.inputs} == {
            "text_input", "count_tokens_only", "return_num_input_tokens"
        }

    asyncio.run(with_server(test))


def test_embed_sends_at_most_max_batch_size_texts_per_request_and_keeps_order() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        result = await client.embed("embedder", ["a", "bb", "ccc d", "e", "ff"], "embd-1")
        # [length, texts in its Triton request]: max_batch_size is 2, so 2 + 2 + 1.
        assert result.vectors == [[1, 2], [2, 2], [5, 2], [1, 2], [2, 1]]
        assert result.prompt_tokens == 6
        shapes = sorted(list(r.inputs[0].shape) for r in fake.infer_requests)
        assert shapes == [[1, 1], [2, 1], [2, 1]]
        assert sorted(r.id for r in fake.infer_requests) == ["embd-1-0", "embd-1-1", "embd-1-2"]

    asyncio.run(with_server(test))


def test_a_full_queue_is_a_429_with_retry_after() -> None:
    async def test(client: TritonLLMClient, fake: FakeTriton) -> None:
        with pytest.raises(UpstreamError) as caught:
            await client.embed("embedder", ["busy"])
        assert caught.value.status_code == 429
        assert caught.value.message == "Exceeds maximum queue size"
        assert caught.value.headers == {"Retry-After": "1"}

    asyncio.run(with_server(test))
