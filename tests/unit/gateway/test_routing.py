"""The router's policy on fake Triton servers: choice, ejection, readmission, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.errors import UpstreamError, upstream_error
from gateway.llm_client import GenerationChunk, GenerationInput
from gateway.routing import (
    EndpointTarget,
    RoutedLLMClient,
    RoutingConfig,
    parse_queue_metrics,
    split_host_port,
)
from tests.unit.gateway.routing_fakes import (
    HANG,
    FakeClock,
    FakeCluster,
    FakeServer,
    chunk,
    unavailable,
)

DEADLINE_S = 5.0
# A long interval: rounds then happen only when a test calls refresh() or a failure wakes them.
QUIET = RoutingConfig(health_interval_s=60.0, probe_timeout_s=1.0, dead_after_s=10.0)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def router(
    cluster: FakeCluster, config: RoutingConfig = QUIET, **kwargs: Any
) -> RoutedLLMClient:
    targets = [EndpointTarget(name) for name in cluster.servers]
    return RoutedLLMClient(targets, cluster.factory, config, **kwargs)


def inp(model: str = "echo", request_id: str = "req") -> GenerationInput:
    return GenerationInput(model=model, prompt="hi", request_id=request_id)


async def collect(stream: AsyncIterator[GenerationChunk]) -> str:
    return "".join([c.text async for c in stream])


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval


def ready_names(client: RoutedLLMClient) -> list[str]:
    return [e.address for e in client.endpoints() if e.ready]


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
        assert [e.outstanding for e in client.endpoints()] == [0, 0]
        await client.close()

    run(test)


def test_queue_metrics_count_as_load() -> None:
    async def test() -> None:
        cluster = FakeCluster(FakeServer("a:1"), FakeServer("b:1"))
        queues = {"http://a:2/metrics": {"echo": 3.0}, "http://b:2/metrics": {}}

        async def probe(url: str) -> dict[str, float]:
            return queues[url]

        targets = [EndpointTarget("a:1", 2), EndpointTarget("b:1", 2)]
        client = RoutedLLMClient(targets, cluster.factory, QUIET, queue_probe=probe)
        texts = [await collect(client.generate(inp())) for _ in range(3)]
        await client.close()
        assert texts == ["from b:1"] * 3

    run(test)


def test_parse_queue_metrics_sums_instances() -> None:
    text = (
        "# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="m",version="1"} 2\n'
        'nv_inference_pending_request_count{model="n",version="1"} 0\n'
        "# TYPE chatllm_waiting_sequences gauge\n"
        'chatllm_waiting_sequences{model="m",version="1",instance="m_0"} 3\n'
        'chatllm_waiting_sequences{model="m",version="1",instance="m_1"} 1\n'
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="m",version="1"} 99\n'
    )
    assert parse_queue_metrics(text) == {"m": 6.0, "n": 0.0}


def test_failure_before_the_first_chunk_is_retried_elsewhere_and_ejects() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([unavailable("Socket closed")])
        client = router(FakeCluster(a, b))
        await client.start()
        a.reachable = False  # it died: the immediate probe must keep it out
        assert await collect(client.generate(inp())) == "from b:1"
        assert ready_names(client) == ["b:1"]
        assert [await collect(client.generate(inp())) for _ in range(3)] == ["from b:1"] * 3
        await client.close()

    run(test)


def test_a_failed_request_triggers_a_probe_that_readmits_a_live_server() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([unavailable("overloaded for a moment")])
        client = router(FakeCluster(a, b))
        assert await collect(client.generate(inp())) == "from b:1"
        # No interval passes (60 s): the failure itself woke the health task.
        await eventually(lambda: ready_names(client) == ["a:1", "b:1"], "a readmitted")
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


def test_probes_eject_a_server_that_is_not_ready_and_readmit_it() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        client = router(FakeCluster(a, b))
        await client.start()
        assert ready_names(client) == ["a:1", "b:1"]
        a.ready = False
        await client.refresh()
        assert ready_names(client) == ["b:1"]
        assert [await collect(client.generate(inp())) for _ in range(2)] == ["from b:1"] * 2
        a.ready = True
        await client.refresh()
        assert ready_names(client) == ["a:1", "b:1"]
        assert await collect(client.generate(inp())) == "from a:1"
        await client.close()

    run(test)


def test_health_task_runs_on_its_interval_until_closed() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        config = RoutingConfig(health_interval_s=0.02, probe_timeout_s=1.0)
        client = router(FakeCluster(a, b), config)
        assert await client.is_ready()
        a.reachable = False
        await eventually(lambda: ready_names(client) == ["b:1"], "a dropped")
        a.reachable = True
        await eventually(lambda: ready_names(client) == ["a:1", "b:1"], "a back")
        await client.close()
        assert all(c.closed.is_set() for c in [e.client for e in client.endpoints()])

    run(test)


def test_unreachable_idle_server_gets_a_fresh_client_each_probe() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        client = router(FakeCluster(a, b))
        await client.start()
        a.reachable = False
        await client.refresh()
        await client.refresh()
        assert a.clients_made == 3  # the first one, then one per failed probe
        a.reachable = True
        await client.refresh()
        assert ready_names(client) == ["a:1", "b:1"]
        await client.close()

    run(test)


def test_streams_on_a_server_unreachable_for_too_long_end_with_an_error() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        a.queue([chunk("partial "), HANG])
        clock = FakeClock()
        client = router(FakeCluster(a, b), clock=clock)
        stream = client.generate(inp())
        assert (await anext(stream)).text == "partial "
        a.reachable = False  # a partition: no reset, the stream just goes quiet
        await client.refresh()
        assert ready_names(client) == ["b:1"] and a.in_flight == 1  # not yet given up
        clock.now += QUIET.dead_after_s
        await client.refresh()
        with pytest.raises(UpstreamError) as caught:
            await anext(stream)
        assert "failed during the generation" in caught.value.message
        assert a.in_flight == 0
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
        await client.refresh()
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
        await client.start()
        a.models = ()  # unloaded there since the last index
        a.queue([upstream_error("Request for unknown model: 'echo' is not found")])
        assert await collect(client.generate(inp())) == "from b:1"
        await eventually(lambda: "echo" not in client.endpoints()[0].models, "a's index")
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
        await client.start()
        a.reachable = False
        assert await client.count_tokens("echo", "one two three") == 3
        assert (await client.embed("echo", ["ab", "c"])).vectors == [[2.0], [1.0]]
        assert b.unary_calls == 2
        await client.close()

    run(test)


def test_dns_targets_follow_the_resolved_addresses() -> None:
    async def test() -> None:
        cluster = FakeCluster(FakeServer("10.0.0.1:8001"), FakeServer("10.0.0.2:8001"))
        answers = [["10.0.0.1", "10.0.0.2"]]

        async def resolver(host: str, port: int) -> list[str]:
            assert (host, port) == ("triton-headless", 8001)
            return answers[-1]

        client = RoutedLLMClient(
            [EndpointTarget("dns:///triton-headless:8001", 8002)],
            cluster.factory,
            QUIET,
            resolver=resolver,
        )
        await client.start()
        assert ready_names(client) == ["10.0.0.1:8001", "10.0.0.2:8001"]
        assert client.endpoints()[0].metrics_url == "http://10.0.0.1:8002/metrics"
        answers.append(["10.0.0.2"])  # scaled down
        await client.refresh()
        assert [e.address for e in client.endpoints()] == ["10.0.0.2:8001"]
        await client.close()

    run(test)


def test_a_retired_address_drains_before_it_is_dropped() -> None:
    async def test() -> None:
        one = FakeServer("10.0.0.1:8001")
        one.queue([chunk("x "), HANG])
        cluster = FakeCluster(one, FakeServer("10.0.0.2:8001"))
        answers = [["10.0.0.1", "10.0.0.2"]]

        async def resolver(host: str, port: int) -> list[str]:
            return answers[-1]

        client = RoutedLLMClient(
            [EndpointTarget("dns:///svc:8001")], cluster.factory, QUIET, resolver=resolver
        )
        stream = client.generate(inp())
        await anext(stream)
        answers.append(["10.0.0.2"])
        await client.refresh()
        assert [e.address for e in client.endpoints()] == ["10.0.0.1:8001", "10.0.0.2:8001"]
        assert ready_names(client) == ["10.0.0.2:8001"]
        await stream.aclose()
        await client.refresh()
        assert [e.address for e in client.endpoints()] == ["10.0.0.2:8001"]
        await client.close()

    run(test)


def test_split_host_port() -> None:
    assert split_host_port("triton:8001") == ("triton", 8001)
    assert split_host_port("[::1]:8001") == ("::1", 8001)
    with pytest.raises(ValueError):
        split_host_port("no-port")


def test_a_target_without_a_port_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        RoutedLLMClient([EndpointTarget("triton")], FakeCluster().factory)
