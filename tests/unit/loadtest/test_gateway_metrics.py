"""The gateway's /metrics: requests by route and status, latency, in-flight streams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.settings import GatewaySettings
from starlette.types import Message, Receive, Scope, Send
from tests.unit.gateway.fakes import FakeLLMClient, words_script

CHAT = "/v1/chat/completions"


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def make(fake: FakeLLMClient, registry: CollectorRegistry | None = None, **settings: object) -> TestClient:
    app = create_app(GatewaySettings(triton_urls=["127.0.0.1:1"], **settings), fake, registry)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def chat(client: TestClient, stream: bool, **headers: str) -> int:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return client.post(CHAT, json=body, headers=headers).status_code


def test_requests_are_counted_by_route_template_and_status() -> None:
    fake = FakeLLMClient()
    fake.queue(words_script("one two three"))
    fake.queue(words_script("four five"))
    with make(fake) as client:
        assert chat(client, stream=True) == 200
        assert chat(client, stream=False) == 200
        assert client.get("/v1/models/nope").status_code == 404
        found = samples(client)

    assert value(found, "tritonchat_gateway_requests_total", route=CHAT, method="POST", status="200") == 2
    assert value(found, "tritonchat_gateway_requests_total", route="/v1/models/{model_id:path}", method="GET",
                 status="404") == 1
    assert value(found, "tritonchat_gateway_request_duration_seconds_count", route=CHAT, method="POST") == 2
    assert value(found, "tritonchat_gateway_time_to_first_byte_seconds_count", route=CHAT, method="POST") == 2
    assert value(found, "tritonchat_gateway_in_flight_streams", route=CHAT) == 0  # one stream came and went
    assert value(found, "tritonchat_gateway_in_flight_requests") == 0
    assert not any(dict(labels).get("route") == "/metrics" for _, labels in found)


def test_metrics_are_open_and_refused_requests_are_counted() -> None:
    with make(FakeLLMClient(), api_keys=["secret"]) as client:
        assert chat(client, stream=True) == 401
        found = samples(client)  # no key needed

    assert value(found, "tritonchat_gateway_requests_total", route="other", method="POST", status="401") == 1


def test_each_app_has_its_own_registry_or_the_one_it_is_given() -> None:
    registry = CollectorRegistry()
    fake = FakeLLMClient()
    fake.queue(words_script("hello"))
    with make(fake, registry) as first, make(FakeLLMClient()) as second:
        assert chat(first, stream=False) == 200
        in_second = samples(second)

    assert registry.get_sample_value("tritonchat_gateway_requests_total",
                                     {"route": CHAT, "method": "POST", "status": "200"}) == 1
    assert value(in_second, "tritonchat_gateway_requests_total", route=CHAT, method="POST", status="200") == 0


class _Route:
    path = "/stream"


def test_the_streams_gauge_is_up_while_an_event_stream_is_sent() -> None:
    metrics = GatewayMetrics()
    seen: list[float | None] = []

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("tritonchat_gateway_in_flight_streams", {"route": "/stream"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = _Route()  # what FastAPI does when it dispatches
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        seen.append(gauge())
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def drive(middleware: Callable[[Scope, Receive, Send], object]) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        await middleware({"type": "http", "path": "/stream", "method": "GET"}, receive, send)  # type: ignore[misc]

    asyncio.run(drive(MetricsMiddleware(app, metrics)))

    assert seen == [1.0]
    assert gauge() == 0.0
    assert metrics.registry.get_sample_value("tritonchat_gateway_requests_total",
                                             {"route": "/stream", "method": "GET", "status": "200"}) == 1


def test_an_exception_that_escapes_counts_as_500() -> None:
    metrics = GatewayMetrics()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def drive() -> None:
        async def receive() -> Message:
            return {"type": "http.request"}

        async def send(message: Message) -> None:
            pass

        try:
            await MetricsMiddleware(app, metrics)({"type": "http", "path": "/x", "method": "GET"}, receive, send)
        except RuntimeError:
            pass

    asyncio.run(drive())

    assert metrics.registry.get_sample_value("tritonchat_gateway_requests_total",
                                             {"route": "other", "method": "GET", "status": "500"}) == 1
    assert metrics.registry.get_sample_value("tritonchat_gateway_in_flight_requests") == 0
