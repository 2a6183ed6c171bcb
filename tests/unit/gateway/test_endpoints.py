"""The endpoint pool on fake Triton servers: probes, ejection, readmission, DNS, draining."""

from __future__ import annotations

import pytest

from gateway.dispatch import RoutedLLMClient
from gateway.endpoints import EndpointPool, EndpointTarget, RoutingConfig, parse_queue_metrics, split_host_port
from gateway.errors import UpstreamError
from tests.unit.gateway.cluster_fakes import (
    HANG,
    QUIET,
    FakeClock,
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


def test_probes_eject_a_server_that_is_not_ready_and_readmit_it() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        client = router(FakeCluster(a, b))
        await client.pool.start()
        assert ready_names(client) == ["a:1", "b:1"]
        a.ready = False
        await client.pool.refresh()
        assert ready_names(client) == ["b:1"]
        assert [await collect(client.generate(inp())) for _ in range(2)] == ["from b:1"] * 2
        a.ready = True
        await client.pool.refresh()
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
        assert all(c.closed.is_set() for c in [e.client for e in client.pool.endpoints()])

    run(test)


def test_unreachable_idle_server_gets_a_fresh_client_each_probe() -> None:
    async def test() -> None:
        a, b = FakeServer("a:1"), FakeServer("b:1")
        client = router(FakeCluster(a, b))
        await client.pool.start()
        a.reachable = False
        await client.pool.refresh()
        await client.pool.refresh()
        assert a.clients_made == 3  # the first one, then one per failed probe
        a.reachable = True
        await client.pool.refresh()
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
        await client.pool.refresh()
        assert ready_names(client) == ["b:1"] and a.in_flight == 1  # not yet given up
        clock.now += QUIET.dead_after_s
        await client.pool.refresh()
        with pytest.raises(UpstreamError) as caught:
            await anext(stream)
        assert "failed during the generation" in caught.value.message
        assert a.in_flight == 0
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
            EndpointPool(
                [EndpointTarget("dns:///triton-headless:8001", 8002)],
                cluster.factory,
                QUIET,
                resolver=resolver,
            )
        )
        await client.pool.start()
        assert ready_names(client) == ["10.0.0.1:8001", "10.0.0.2:8001"]
        assert client.pool.endpoints()[0].metrics_url == "http://10.0.0.1:8002/metrics"
        answers.append(["10.0.0.2"])  # scaled down
        await client.pool.refresh()
        assert [e.address for e in client.pool.endpoints()] == ["10.0.0.2:8001"]
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
            EndpointPool([EndpointTarget("dns:///svc:8001")], cluster.factory, QUIET, resolver=resolver)
        )
        stream = client.generate(inp())
        await anext(stream)
        answers.append(["10.0.0.2"])
        await client.pool.refresh()
        assert [e.address for e in client.pool.endpoints()] == ["10.0.0.1:8001", "10.0.0.2:8001"]
        assert ready_names(client) == ["10.0.0.2:8001"]
        await stream.aclose()
        await client.pool.refresh()
        assert [e.address for e in client.pool.endpoints()] == ["10.0.0.2:8001"]
        await client.close()

    run(test)


def test_split_host_port() -> None:
    assert split_host_port("triton:8001") == ("triton", 8001)
    assert split_host_port("[::1]:8001") == ("::1", 8001)
    with pytest.raises(ValueError):
        split_host_port("no-port")


def test_a_target_without_a_port_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        EndpointPool([EndpointTarget("triton")], FakeCluster().factory)
