"""Pieces below the routes: stop strings, stream merging, the model list cache, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from gateway.errors import ModelNotFoundError, UpstreamError, upstream_error
from gateway.generation import StopStringFilter, merge
from gateway.llm_client import ModelCard
from gateway.model_registry import ModelRegistry
from tests.unit.gateway.fakes import FakeLLMClient


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    f = StopStringFilter(stops)
    out = []
    for piece in pieces:
        text, stopped = f.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + f.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ([], ["a", "b"], ("ab", False)),
        (["x"], ["abc"], ("abc", False)),
        (["STOP"], ["abcSTOPdef"], ("abc", True)),
        (["STOP"], ["ab", "cS", "TO", "Pd"], ("abc", True)),
        (["STOP"], ["abcST", "x"], ("abcSTx", False)),
        (["STOP"], ["abcST"], ("abcST", False)),
        (["bb", "a"], ["xxbbya"], ("xx", True)),
        (["aab"], ["aa", "aab"], ("aa", True)),
    ],
)
def test_stop_string_filter(
    stops: list[str], pieces: list[str], expected: tuple[str, bool]
) -> None:
    assert feed_all(stops, pieces) == expected


def test_stop_filter_holds_back_only_a_possible_stop_start() -> None:
    f = StopStringFilter(["</s>"])
    assert f.feed("hello <") == ("hello ", False)
    assert f.feed("/") == ("", False)
    assert f.feed("b>") == ("</b>", False)


async def _items(name: str, count: int) -> AsyncGenerator[str, None]:
    for i in range(count):
        await asyncio.sleep(0)
        yield f"{name}{i}"


def test_merge_yields_every_item_of_every_stream() -> None:
    async def run() -> list[str]:
        return [x async for x in merge([_items("a", 3), _items("b", 2)])]

    items = asyncio.run(run())
    assert sorted(items) == ["a0", "a1", "a2", "b0", "b1"]
    assert [x for x in items if x[0] == "a"] == ["a0", "a1", "a2"]


def test_merge_reraises_the_first_failure_and_closes_the_rest() -> None:
    closed = []

    async def endless() -> AsyncGenerator[str, None]:
        try:
            while True:
                yield "x"
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    async def failing() -> AsyncGenerator[str, None]:
        yield "f"
        raise UpstreamError(500, "boom", "server_error")

    async def run() -> None:
        async for _ in merge([endless(), failing()]):
            pass

    with pytest.raises(UpstreamError, match="boom"):
        asyncio.run(run())
    assert closed == [True]


def test_closing_merge_early_closes_running_streams() -> None:
    closed = []

    async def waiting() -> AsyncGenerator[str, None]:
        try:
            yield "first"
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.append(True)

    async def run() -> None:
        merged = merge([waiting(), waiting()])
        assert await anext(merged) == "first"
        await merged.aclose()

    asyncio.run(run())
    assert closed == [True, True]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_registry_caches_for_ttl_then_refreshes() -> None:
    fake = FakeLLMClient()
    clock = Clock()
    registry = ModelRegistry(fake, ttl_s=5.0, clock=clock)

    async def run() -> None:
        await registry.cards()
        clock.now += 4.9
        assert (await registry.resolve("echo-alias")).triton_model == "echo"
        assert fake.list_calls == 1
        fake.models.append(ModelCard("new", "new", None))
        clock.now += 0.2
        assert (await registry.resolve("new")).id == "new"
        assert fake.list_calls == 2
        with pytest.raises(ModelNotFoundError):
            await registry.resolve("absent")

    asyncio.run(run())


def test_registry_concurrent_misses_ask_once() -> None:
    fake = FakeLLMClient()
    registry = ModelRegistry(fake, ttl_s=5.0)

    async def run() -> None:
        await asyncio.gather(*(registry.cards() for _ in range(10)))

    asyncio.run(run())
    assert fake.list_calls == 1


@pytest.mark.parametrize(
    ("message", "grpc_status", "status", "code"),
    [
        ("[INVALID_ARG] bad", None, 400, None),
        ("[CANCELLED] stop", None, 503, "cancelled"),
        ("[NOT_FOUND] gone", None, 404, "model_not_found"),
        ("bad input", "StatusCode.INVALID_ARGUMENT", 400, None),
        ("no such model", "StatusCode.NOT_FOUND", 404, "model_not_found"),
        ("connect failed", "StatusCode.UNAVAILABLE", 503, "service_unavailable"),
        ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", 429, "rate_limit_exceeded"),
        ("slow down", "StatusCode.RESOURCE_EXHAUSTED", 429, "rate_limit_exceeded"),
        ("deadline", "DEADLINE_EXCEEDED", 504, "timeout"),
        ("weird", "StatusCode.INTERNAL", 500, None),
        ("model 'x' not found", "StatusCode.INTERNAL", 404, "model_not_found"),
        ("[INTERNAL] file not found", None, 500, None),
    ],
)
def test_upstream_error_mapping(
    message: str, grpc_status: str | None, status: int, code: str | None
) -> None:
    error = upstream_error(message, grpc_status)
    assert (error.status_code, error.code) == (status, code)
    assert ("Retry-After" in error.headers) == (status in (429, 503))


def test_tritons_queue_full_message_loses_its_request_id_prefix() -> None:
    error = upstream_error("[request id: chatcmpl-1-0] Exceeds maximum queue size")

    assert (error.status_code, error.err_type) == (429, "rate_limit_error")
    assert error.message == "Exceeds maximum queue size"
    assert error.headers == {"Retry-After": "1"}


def test_the_code_prefix_is_stripped_from_what_users_see() -> None:
    assert upstream_error("[INVALID_ARG] no FAIL").message == "no FAIL"
    assert upstream_error("plain").message == "plain"
