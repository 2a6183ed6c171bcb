"""`python -m gateway`: run the gateway under uvicorn.

Flags override `TRITONCHAT_GATEWAY_*` environment variables, which override defaults.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.dispatch import RoutedLLMClient
from gateway.endpoints import (
    EndpointCollector,
    EndpointPool,
    EndpointTarget,
    HttpQueueProbe,
    RoutingConfig,
)
from gateway.settings import GatewaySettings
from gateway.triton_client import TritonLLMClient

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description="OpenAI-compatible gateway for Triton LLM models"
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 9000)")
    parser.add_argument(
        "--triton-url",
        dest="triton_urls",
        action="append",
        metavar="HOST:PORT",
        help="Triton gRPC endpoint; repeat for several (default 127.0.0.1:8001)",
    )
    parser.add_argument(
        "--triton-metrics-port",
        dest="triton_metrics_ports",
        action="append",
        type=int,
        metavar="PORT",
        help="Triton metrics port scraped for queue lengths: once for all endpoints, or once "
        "per --triton-url (default: not scraped)",
    )
    parser.add_argument(
        "--health-check-interval-s", type=float, help="time between endpoint health rounds"
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="accepted bearer key; repeat for several (default: no auth)",
    )
    parser.add_argument("--request-timeout-s", type=float, help="upper bound on one generation")
    parser.add_argument(
        "--max-request-body-bytes",
        type=int,
        metavar="N",
        help="larger request bodies get 413 (default 4 MiB)",
    )
    parser.add_argument(
        "--graceful-shutdown-s",
        type=float,
        help="on SIGTERM, time open requests and streams get to finish (default 30)",
    )
    parser.add_argument("--model-list-ttl-s", type=float, help="cache time of the model list")
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info)",
    )
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """Settings from the environment, with every flag that was given on top."""
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return GatewaySettings(**overrides)


def build_client(settings: GatewaySettings) -> RoutedLLMClient:
    """One `TritonLLMClient` per Triton endpoint, behind the router."""
    ports = settings.triton_metrics_ports
    if len(ports) == 1:
        ports = ports * len(settings.triton_urls)
    targets = [
        EndpointTarget(url, ports[i] if ports else None)
        for i, url in enumerate(settings.triton_urls)
    ]
    config = RoutingConfig(
        health_interval_s=settings.health_check_interval_s,
        probe_timeout_s=settings.health_check_timeout_s,
        model_refresh_s=max(settings.model_list_ttl_s, settings.health_check_interval_s),
    )

    def endpoint_client(address: str) -> TritonLLMClient:
        return TritonLLMClient(address, request_timeout_s=settings.request_timeout_s)

    probe = HttpQueueProbe(settings.health_check_timeout_s) if ports else None
    return RoutedLLMClient(EndpointPool(targets, endpoint_client, config, queue_probe=probe))


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_args(parse_args(argv))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    client = build_client(settings)
    registry = CollectorRegistry()
    registry.register(EndpointCollector(client.pool))
    app = create_app(settings, client, registry)
    logger.info(
        "gateway on http://%s:%d, Triton at %s, auth %s",
        settings.host,
        settings.port,
        ", ".join(settings.triton_urls),
        "on" if settings.api_keys else "off",
    )
    # SIGTERM (or SIGINT): uvicorn stops accepting, then waits for open requests and streams,
    # cancelling what is left after the graceful timeout.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
