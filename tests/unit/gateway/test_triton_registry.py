"""Triton servers that join at run time: the router's add/remove API and beat expiry."""

from __future__ import annotations

from gateway.dispatch import RoutedLLMClient
from gateway.endpoints import EndpointPool, EndpointTarget
from gateway.triton_registry import TritonRegistry
from tests.unit.gateway.cluster_fakes import QUIET, FakeClock, FakeCluster, FakeServer, collect, inp, ready_names, run


def make(cluster: FakeCluster) -> RoutedLLMClient:
    return RoutedLLMClient(EndpointPool([EndpointTarget("a:1")], cluster.factory, QUIET))


def test_added_server_takes_requests_at_once_and_leaves_when_removed() -> None:
    async def test() -> None:
        cluster = FakeCluster(FakeServer("a:1"), FakeServer("b:1"))
        client = make(cluster)
        await client.pool.start()
        await client.pool.add_endpoint("b:1")
        assert ready_names(client) == ["a:1", "b:1"]  # no health round needed
        texts = {await collect(client.generate(inp())) for _ in range(2)}
        assert texts == {"from a:1", "from b:1"}

        await client.pool.remove_endpoint("b:1")
        assert ready_names(client) == ["a:1"]
        assert {await collect(client.generate(inp())) for _ in range(3)} == {"from a:1"}
        await client.pool.refresh()  # idle: dropped from the pool
        assert [e.address for e in client.pool.endpoints()] == ["a:1"]
        await client.close()

    run(test)


def test_a_fixed_server_is_never_removed_by_the_registry() -> None:
    async def test() -> None:
        client = make(FakeCluster(FakeServer("a:1")))
        await client.pool.add_endpoint("a:1")
        await client.pool.remove_endpoint("a:1")
        await client.pool.refresh()
        assert ready_names(client) == ["a:1"]
        await client.close()

    run(test)


class RecordingPool:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def add_endpoint(self, address: str) -> None:
        self.events.append(("add", address))

    async def remove_endpoint(self, address: str) -> None:
        self.events.append(("remove", address))


def test_beats_keep_a_server_and_silence_drops_it_within_two_intervals() -> None:
    async def test() -> None:
        clock, pool = FakeClock(), RecordingPool()
        registry = TritonRegistry(pool, clock)
        assert await registry.beat("b:1", interval_s=2.0) is True
        assert await registry.beat("b:1", interval_s=2.0) is False  # a beat, not a new server
        for _ in range(5):  # beating on time keeps it
            clock.now += 2.0
            await registry.beat("b:1", 2.0)
            assert await registry.expire() == []
        clock.now += 2.9  # one beat lost: still there
        assert await registry.expire() == []
        clock.now += 0.2  # 1.5 intervals of silence
        assert await registry.expire() == ["b:1"]
        assert pool.events == [("add", "b:1"), ("remove", "b:1")]
        assert await registry.beat("b:1", 2.0) is True  # forgotten: its next beat registers again
        assert pool.events[-1] == ("add", "b:1")
        await registry.close()

    run(test)


def test_unregister_removes_at_once() -> None:
    async def test() -> None:
        pool = RecordingPool()
        registry = TritonRegistry(pool)
        await registry.beat("b:1", 30.0)
        assert await registry.unregister("b:1") is True
        assert await registry.unregister("b:1") is False
        assert pool.events == [("add", "b:1"), ("remove", "b:1")]
        await registry.close()

    run(test)
