"""Being full is not being down; a non-streaming generation survives its server's death."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.errors import UpstreamError, upstream_error
from gateway.llm_client import ModelCard
from tests.unit.gateway.cluster_fakes import (
    HANG,
    FakeCluster,
    FakeServer,
    chunk,
    collect,
    eventually,
    inp,
    ready_names,
    router,
    run,
    unavailable,
)

AT_CAPACITY = "[UNAVAILABLE] the engine is at capacity (64 running, 256 waiting); retry later"


class SizedServer(FakeServer):
    """A server whose model card says how many requests it takes."""

    def __init__(self, name: str, capacity: int) -> None:
        super().__init__(name)
        self.capacity = capacity

    def cards(self) -> list[ModelCard]:
        return [ModelCard(m, m, 256, capacity=self.capacity) for m in self.models]


@pytest.mark.parametrize("message", [AT_CAPACITY, "Exceeds maximum queue size"])
def test_an_overloaded_answer_is_a_429_with_retry_after(message: str) -> None:
    error = upstream_error(message, "StatusCode.UNAVAILABLE")
    assert (error.status_code, error.headers) == (429, {"Retry-After": "1"})
    assert error.overloaded and not error.server_side


def test_an_engine_at_capacity_stays_in_routing_and_the_request_goes_elsewhere() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([upstream_error(AT_CAPACITY)])
        client = router(FakeCluster(a, b))
        assert await collect(client.generate(inp())) == "from b:1"
        assert ready_names(client) == ["a:1", "b:1"]
        await client.close()

    run(test)


def test_a_lone_full_server_refuses_with_429_and_keeps_serving() -> None:
    async def test() -> None:
        a = FakeServer("a:1")
        a.queue([upstream_error(AT_CAPACITY)])
        client = router(FakeCluster(a))
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(inp()))
        assert caught.value.status_code == 429
        assert ready_names(client) == ["a:1"]
        assert await collect(client.generate(inp())) == "from a:1"
        await client.close()

    run(test)


def test_when_every_server_is_full_the_gateway_refuses_without_asking() -> None:
    async def test() -> None:
        a, b = SizedServer("a:1", capacity=1), SizedServer("b:1", capacity=1)
        release = asyncio.Event()
        a.queue([release, chunk("a done", "stop")])
        b.queue([release, chunk("b done", "stop")])
        client = router(FakeCluster(a, b))
        running = [asyncio.create_task(collect(client.generate(inp()))) for _ in range(2)]
        await eventually(lambda: a.in_flight == 1 and b.in_flight == 1, "both servers full")
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(inp()))
        assert caught.value.status_code == 429
        assert caught.value.headers == {"Retry-After": "1"}
        assert len(a.inputs) + len(b.inputs) == 2, "the refused request reached no server"
        release.set()
        assert sorted(await asyncio.gather(*running)) == ["a done", "b done"]
        assert await collect(client.generate(inp())) in ("from a:1", "from b:1")
        await client.close()

    run(test)


def test_a_non_streaming_generation_killed_mid_way_runs_again_elsewhere() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([chunk("half of it "), unavailable("Socket closed")])
        b.queue([chunk("all "), chunk("of it", "stop")])
        client = router(FakeCluster(a, b))
        replayable = dataclasses.replace(inp(), replayable=True)
        assert await collect(client.generate(replayable)) == "all of it"
        assert (len(a.inputs), len(b.inputs)) == (1, 1)
        await client.close()

    run(test)


def test_a_non_streaming_generation_is_not_replayed_after_a_model_error() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([chunk("some "), upstream_error("[INTERNAL] the model failed")])
        client = router(FakeCluster(a, b))
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(dataclasses.replace(inp(), replayable=True)))
        assert caught.value.status_code == 500
        assert b.inputs == []
        await client.close()

    run(test)


def test_a_held_generation_is_cancelled_when_its_client_leaves() -> None:
    async def test() -> None:
        a = FakeServer("a:1")
        a.queue([chunk("partial "), HANG])
        client = router(FakeCluster(a))
        task = asyncio.create_task(collect(client.generate(dataclasses.replace(inp(), replayable=True))))
        await eventually(lambda: a.in_flight == 1, "the generation running")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await eventually(lambda: a.in_flight == 0, "the upstream stream closed")
        assert client.pool.endpoints()[0].outstanding == 0
        await client.close()

    run(test)


def test_a_draining_server_is_a_503_retried_elsewhere() -> None:
    message = "Server is stopping, scheduler for model has stopped accepting new inference requests"
    assert upstream_error(message).server_side

    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([upstream_error(message)])
        client = router(FakeCluster(a, b))
        assert await collect(client.generate(inp())) == "from b:1"
        await client.close()

    run(test)


def test_capacity_comes_from_the_model_config_times_its_instances() -> None:
    from gateway.triton_client import parse_model_config

    def config(**params: str) -> dict[str, object]:
        return {
            "model_transaction_policy": {"decoupled": True},
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
            "parameters": {k: {"string_value": v} for k, v in params.items()},
        }

    model = parse_model_config("m", config(max_num_seqs="4", max_queue_size="12"))
    assert model is not None and {card.capacity for card in model.cards()} == {32}
    unknown = parse_model_config("m", config(max_num_seqs="4"))
    assert unknown is not None and unknown.capacity is None
