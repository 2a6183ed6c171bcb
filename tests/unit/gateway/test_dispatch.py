"""The router's policy on fake Triton servers: choice, retries, failover."""

from __future__ import annotations

import pytest

from gateway.dispatch import RoutedLLMClient
from gateway.endpoints import EndpointPool, EndpointTarget
from gateway.errors import UpstreamError, upstream_error
from tests.unit.gateway.cluster_fakes import (
    HANG,
    QUIET,
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


def test_sequential_requests_alternate_between_idle_servers() -> None:
    async def test() -> None:
        cluster = FakeCluster(FakeServer("a:1"), FakeServer("b:1"))
        client = router(cluster)
        texts = [await collect(client.generate(inp())) for _ in range(4)]
        await client.close()
        assert texts == ["from a:1", "from b:1", "from a:1", "from b:1"]

    run(test)


def test_least_outstanding_requests_wins() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([chunk("a "), HANG], [chunk("a "), HANG])
        cluster = FakeCluster(a, b)
        client = router(cluster)
        first = client.generate(inp())
        assert (await anext(first)).text == "a "  # a: 1 outstanding
        assert await collect(client.generate(inp())) == "from b:1"  # b idle
        assert await collect(client.generate(inp())) == "from b:1"  # still b: a is busy
        await first.aclose()
        assert [e.outstanding for e in client.pool.endpoints()] == [0, 0]
        await client.close()

    run(test)


def test_queue_metrics_count_as_load() -> None:
    async def test() -> None:
        cluster = FakeCluster(FakeServer("a:1"), FakeServer("b:1"))
        queues = {"http://a:2/metrics": {"echo": 3.0}, "http://b:2/metrics": {}}

        async def probe(url: str) -> dict[str, float]:
            return queues[url]

        targets = [EndpointTarget("a:1", 2), EndpointTarget("b:1", 2)]
        client = RoutedLLMClient(EndpointPool(targets, cluster.factory, QUIET, queue_probe=probe))
        texts = [await collect(client.generate(inp())) for _ in range(3)]
        await client.close()
        assert texts == ["from b:1"] * 3

    run(test)


def test_failure_before_the_first_chunk_is_retried_elsewhere_and_ejects() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([unavailable("Socket closed")])
        client = router(FakeCluster(a, b))
        await client.pool.start()
        a.reachable = False  # it died: the immediate probe must keep it out
        assert await collect(client.generate(inp())) == "from b:1"
        assert ready_names(client) == ["b:1"]
        assert [await collect(client.generate(inp())) for _ in range(3)] == ["from b:1"] * 3
        await client.close()

    run(test)


def test_failure_after_the_first_chunk_is_not_retried() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([chunk("partial "), unavailable("Socket closed")])
        client = router(FakeCluster(a, b))
        stream = client.generate(inp())
        assert (await anext(stream)).text == "partial "
        with pytest.raises(UpstreamError) as caught:
            await anext(stream)
        assert caught.value.status_code == 503
        assert "failed during the generation" in caught.value.message
        assert b.inputs == []
        await client.close()

    run(test)


def test_refused_requests_are_not_retried() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([upstream_error("[INVALID_ARG] bad prompt")])
        client = router(FakeCluster(a, b))
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(inp()))
        assert caught.value.status_code == 400
        assert b.inputs == [] and ready_names(client) == ["a:1", "b:1"]
        await client.close()

    run(test)


def test_a_full_queue_is_retried_without_ejecting() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([upstream_error("Exceeds maximum queue size")])
        client = router(FakeCluster(a, b))
        assert await collect(client.generate(inp())) == "from b:1"
        assert ready_names(client) == ["a:1", "b:1"]
        await client.close()

    run(test)


def test_when_every_server_fails_the_last_error_is_returned() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([upstream_error("Exceeds maximum queue size")])
        b.queue([upstream_error("Exceeds maximum queue size")])
        client = router(FakeCluster(a, b))
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(inp()))
        assert caught.value.status_code == 429
        await client.close()

    run(test)


def test_models_are_the_union_and_requests_go_where_the_model_is() -> None:
    async def test() -> None:
        a = FakeServer("a:1", models=("echo", "only-a"))
        b = FakeServer("b:1", models=("echo", "only-b"))
        client = router(FakeCluster(a, b))
        assert sorted(c.id for c in await client.list_models()) == ["echo", "only-a", "only-b"]
        for _ in range(3):
            assert await collect(client.generate(inp("only-b"))) == "from b:1"
        b.ready = False
        await client.pool.refresh()
        assert sorted(c.id for c in await client.list_models()) == ["echo", "only-a"]
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(inp("only-b")))
        assert caught.value.status_code == 503
        await client.close()

    run(test)


def test_a_model_missing_on_one_server_is_retried_and_its_index_reread() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        client = router(FakeCluster(a, b))
        await client.pool.start()
        a.models = ()  # unloaded there since the last index
        a.queue([upstream_error("Request for unknown model: 'echo' is not found")])
        assert await collect(client.generate(inp())) == "from b:1"
        await eventually(lambda: "echo" not in client.pool.endpoints()[0].models, "a's index")
        assert [await collect(client.generate(inp())) for _ in range(2)] == ["from b:1"] * 2
        await client.close()

    run(test)


def test_nothing_ready_is_a_503_and_not_ready() -> None:
    async def test() -> None:
        a = FakeServer("a:1", reachable=False)
        client = router(FakeCluster(a))
        assert not await client.is_ready()
        with pytest.raises(UpstreamError) as caught:
            await collect(client.generate(inp()))
        assert caught.value.status_code == 503
        assert caught.value.retry_after_s is not None
        with pytest.raises(UpstreamError):
            await client.list_models()
        await client.close()

    run(test)


def test_unary_calls_are_routed_and_retried() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        client = router(FakeCluster(a, b))
        await client.pool.start()
        a.reachable = False
        assert await client.count_tokens("echo", "one two three") == 3
        assert (await client.embed("echo", ["ab", "c"])).vectors == [[2.0], [1.0]]
        assert b.unary_calls == 2
        await client.close()

    run(test)
