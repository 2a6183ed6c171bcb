"""The gateway's Prometheus metrics: requests by route and status, in-flight streams, latency.

`install_metrics(app, registry)` adds a pure ASGI middleware (it does not buffer or wrap
streaming bodies) and the `GET /metrics` route. The registry belongs to the app: each
`create_app` call gets its own, so tests and several apps in one process never share
counters through a module global.

Series (route labels are the templates of the routes that served the requests, such as
`/v1/models/{model_id:path}`; requests answered before routing, i.e. 401 and 404, are labelled
`other`, so scanners cannot blow up the label set):
- `tritonchat_gateway_requests_total{route, method, status}`: finished requests.
- `tritonchat_gateway_request_duration_seconds{route, method}`: from the request to the end
  of the response body, i.e. the whole stream for server-sent events.
- `tritonchat_gateway_time_to_first_byte_seconds{route, method}`: until the response
  headers. The chat and completion routes wait for the first generated text before they
  answer a stream with 200, so for streams this is the time to first token seen by the
  gateway.
- `tritonchat_gateway_in_flight_requests`: requests being handled.
- `tritonchat_gateway_in_flight_streams{route}`: event-stream responses being sent.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_PATH = "/metrics"
UNMATCHED_ROUTE = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_EVENT_STREAM = b"text/event-stream"


class GatewayMetrics:
    """The gateway's metric families, registered in `registry` (a new one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "tritonchat_gateway_requests", "HTTP requests finished, by route, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram(
            "tritonchat_gateway_request_duration_seconds",
            "Time from the request to the end of the response body (the whole stream for SSE)",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_byte = Histogram(
            "tritonchat_gateway_time_to_first_byte_seconds",
            "Time from the request to the response headers (for streams: to the first token)",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "tritonchat_gateway_in_flight_requests", "Requests being handled", registry=self.registry)
        self.streams = Gauge(
            "tritonchat_gateway_in_flight_streams", "Server-sent event streams being sent", ["route"],
            registry=self.registry)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def route_label(scope: Scope) -> str:
    """The template of the route that served `scope` (FastAPI puts the route into the scope
    when it dispatches), or `other` for a request answered before routing."""
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED_ROUTE)) if route is not None else UNMATCHED_ROUTE


class MetricsMiddleware:
    """Counts every HTTP request (but `/metrics` itself) and times it to its last byte.

    The route label is read once the route is known: at the response start for the streams
    gauge, at the end for the counter and histograms. An exception that escapes the app
    counts as 500.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics,
                 excluded_paths: frozenset[str] = frozenset({METRICS_PATH})) -> None:
        self._app = app
        self._metrics = metrics
        self._excluded = excluded_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._excluded:
            await self._app(scope, receive, send)
            return
        metrics = self._metrics
        method = scope["method"]
        start = time.perf_counter()
        status = 500
        stream_route: str | None = None  # set while an event stream is being sent
        metrics.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, stream_route
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route = route_label(scope)
                metrics.first_byte.labels(route, method).observe(time.perf_counter() - start)
                headers = dict(message.get("headers", ()))
                if headers.get(b"content-type", b"").startswith(_EVENT_STREAM):
                    stream_route = route
                    metrics.streams.labels(route).inc()
            await send(message)

        try:
            await self._app(scope, receive, send_wrapper)
        finally:
            if stream_route is not None:
                metrics.streams.labels(stream_route).dec()
            metrics.in_flight.dec()
            route = route_label(scope)
            metrics.requests.labels(route, method, str(status)).inc()
            metrics.duration.labels(route, method).observe(time.perf_counter() - start)


def install_metrics(app: FastAPI, registry: CollectorRegistry | None = None) -> GatewayMetrics:
    """Add the metrics middleware (outermost of those added so far) and `GET /metrics`."""
    metrics = GatewayMetrics(registry)
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics
