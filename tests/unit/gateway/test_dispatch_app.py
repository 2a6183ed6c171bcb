"""The gateway in front of the router (fake servers): health, model union, mid-stream death."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from gateway.__main__ import build_client, parse_args, settings_from_args
from gateway.app import create_app
from gateway.dispatch import RoutedLLMClient
from gateway.endpoints import EndpointCollector, EndpointPool, EndpointTarget, RoutingConfig
from gateway.settings import GatewaySettings
from tests.unit.gateway.cluster_fakes import FakeCluster, FakeServer, chunk, unavailable
from tests.unit.gateway.fakes import sse_events

CONFIG = RoutingConfig(health_interval_s=60.0, probe_timeout_s=1.0)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(FakeServer("a:1", models=("echo", "a-only")), FakeServer("b:1"))


@pytest.fixture
def http(cluster: FakeCluster) -> Iterator[TestClient]:
    router = RoutedLLMClient(
        EndpointPool([EndpointTarget(name) for name in cluster.servers], cluster.factory, CONFIG)
    )
    settings = GatewaySettings(triton_urls=list(cluster.servers), model_list_ttl_s=0)
    with TestClient(create_app(settings, router), raise_server_exceptions=False) as client:
        yield client
    assert all(c.closed.is_set() for c in cluster.clients)  # closed with the app


def test_health_needs_one_ready_server(http: TestClient, cluster: FakeCluster) -> None:
    router = http.app.state.gateway.client  # type: ignore[attr-defined]
    assert http.get("/health").status_code == 200
    cluster.servers["a:1"].ready = False
    http.portal.call(router.pool.refresh)  # type: ignore[union-attr]
    assert http.get("/health").status_code == 200
    cluster.servers["b:1"].reachable = False
    http.portal.call(router.pool.refresh)  # type: ignore[union-attr]
    assert http.get("/health").status_code == 503
    answer = http.post("/v1/completions", json={"model": "echo", "prompt": "x"})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    cluster.servers["a:1"].ready = True
    http.portal.call(router.pool.refresh)  # type: ignore[union-attr]
    assert http.get("/health").status_code == 200


def test_models_are_the_union(http: TestClient) -> None:
    ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert sorted(ids) == ["a-only", "echo"]


def test_a_server_dying_mid_stream_ends_with_an_error_event(
    http: TestClient, cluster: FakeCluster
) -> None:
    cluster.servers["a:1"].queue([chunk("partial "), unavailable("Socket closed")])
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    response = http.post("/v1/chat/completions", json=body)

    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[1]["choices"][0]["delta"]["content"] == "partial "
    assert events[-2]["error"]["code"] == "service_unavailable"
    assert "answer is incomplete" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]"
    # The next request goes to b without the client noticing anything.
    again = http.post("/v1/completions", json={"model": "echo", "prompt": "x"})
    assert again.json()["choices"][0]["text"] == "from b:1"


def test_endpoint_gauges(cluster: FakeCluster) -> None:
    router = RoutedLLMClient(EndpointPool([EndpointTarget("a:1"), EndpointTarget("b:1")], cluster.factory, CONFIG))
    registry = CollectorRegistry()
    registry.register(EndpointCollector(router.pool))
    settings = GatewaySettings(triton_urls=["a:1", "b:1"])
    with TestClient(create_app(settings, router)) as http:
        assert http.get("/health").status_code == 200
        cluster.servers["b:1"].ready = False
        http.portal.call(router.pool.refresh)  # type: ignore[union-attr]
    assert registry.get_sample_value("tritonchat_gateway_endpoint_ready", {"endpoint": "a:1"}) == 1
    assert registry.get_sample_value("tritonchat_gateway_endpoint_ready", {"endpoint": "b:1"}) == 0


def test_build_client_from_flags() -> None:
    settings = settings_from_args(
        parse_args(
            ["--triton-url", "127.0.0.1:1", "--triton-url", "dns:///triton:8001",
             "--triton-metrics-port", "8002", "--health-check-interval-s", "0.5"]
        )
    )
    client = build_client(settings)
    assert [t.url for t in client.pool.targets] == ["127.0.0.1:1", "dns:///triton:8001"]
    assert [t.metrics_port for t in client.pool.targets] == [8002, 8002]
    assert client.pool.config.health_interval_s == 0.5


def test_metrics_ports_must_match_the_urls() -> None:
    with pytest.raises(ValueError):
        GatewaySettings(triton_urls=["a:1", "b:1", "c:1"], triton_metrics_ports=[1, 2])
    assert GatewaySettings(triton_urls=["a:1", "b:1"], triton_metrics_ports=[1, 2])
