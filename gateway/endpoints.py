"""The Triton endpoints behind one gateway and their health: `EndpointPool`.

- Discovery: a target is `HOST:PORT`, or `dns:///HOST:PORT` for every address the name
  resolves to (a Kubernetes headless Service), resolved again on each health round.
  Servers may also join and leave at run time (`add_endpoint`, `remove_endpoint`).
- Health: a background task probes every endpoint each `health_interval_s` (readiness,
  its repository index every `model_refresh_s`, and optionally Triton's queue metrics).
  An endpoint is routable only while ready and after its model list is known.
- Capacity view: each endpoint counts the requests this gateway has outstanding there, per
  model, against the capacity its model configs declare (`ModelCard.capacity`).
- Failures: an endpoint that fails a request with "unavailable" (503: unreachable, shutting
  down, killed) is taken out at once and probed right away; it is taken back when a probe
  finds it ready (`record_failure`).
- Never a hang: an endpoint that stays unreachable for `dead_after_s` has its client
  replaced, which closes its gRPC channels and so ends its in-flight streams with an error.
  An unreachable endpoint with nothing in flight gets a fresh client on every probe, so a
  restarted server is reconnected at once instead of after gRPC's reconnect back-off.

Choosing among the endpoints and retrying is `gateway.dispatch`. Everything here runs on
the event loop: no threads, no locks beyond the start-up one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.errors import UpstreamError
from gateway.llm_client import LLMClient, ModelCard

logger = logging.getLogger(__name__)

DNS_PREFIX = "dns:///"
QUEUE_METRICS = ("nv_inference_pending_request_count", "chatllm_waiting_sequences")
"""Triton's requests waiting for `execute()`, and our backend's sequences waiting for a
batch slot; both are labelled by `model`."""

ClientFactory = Callable[[str], LLMClient]
"""Builds the client of one endpoint from its gRPC address `host:port`."""
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves a host name to IP addresses."""
QueueProbe = Callable[[str], Awaitable[dict[str, float]]]
"""Scrapes a Triton metrics URL into requests queued per model."""


@dataclass(frozen=True)
class EndpointTarget:
    """One configured Triton target."""

    url: str
    """`HOST:PORT` (gRPC), or `dns:///HOST:PORT` for every address HOST resolves to."""
    metrics_port: int | None = None
    """Triton's metrics port on the same host, scraped for queue lengths when set."""

    @property
    def is_dns(self) -> bool:
        return self.url.startswith(DNS_PREFIX)


@dataclass(frozen=True)
class RoutingConfig:
    """Timings of the health loop and the retry budget."""

    health_interval_s: float = 1.0
    """Time between two probe rounds (a failed request triggers a round at once)."""
    probe_timeout_s: float = 2.0
    """Upper bound on each probe call; a server slower than that counts as unreachable."""
    model_refresh_s: float = 5.0
    """How often a ready endpoint's repository index is read again."""
    dead_after_s: float = 10.0
    """Unreachable this long: the endpoint's in-flight streams are ended with an error."""
    max_attempts: int = 3
    """Endpoints tried for one request before its last error is returned."""


def split_host_port(address: str) -> tuple[str, int]:
    """`"host:8001"` or `"[::1]:8001"` into `("host", 8001)`; raises `ValueError`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_queue_metrics(text: str) -> dict[str, float]:
    """Requests queued per model from Triton's Prometheus text (see `QUEUE_METRICS`)."""
    queued: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in QUEUE_METRICS:
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if model:
                queued[model] = queued.get(model, 0.0) + float(sample.value)
    return queued


async def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses of `host` (the event loop's resolver, no blocking)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class HttpQueueProbe:
    """`QueueProbe` over one shared httpx client."""

    def __init__(self, timeout_s: float) -> None:
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def __call__(self, url: str) -> dict[str, float]:
        response = await self._http.get(url)
        response.raise_for_status()
        return parse_queue_metrics(response.text)

    async def aclose(self) -> None:
        await self._http.aclose()


class Endpoint:
    """One Triton server as the router sees it (state owned by the event loop)."""

    def __init__(
        self, address: str, target: EndpointTarget, client: LLMClient, metrics_url: str | None
    ) -> None:
        self.address = address
        self.target = target
        self.client = client
        self.metrics_url = metrics_url
        self.ready = False
        """Routable: the last probe found it ready and its model list is known."""
        self.cards: tuple[ModelCard, ...] = ()
        self.models: frozenset[str] = frozenset()
        """Triton model names it serves."""
        self.models_fetched_at: float | None = None
        self.queued: dict[str, float] = {}
        self.outstanding = 0
        """Requests this gateway has running there."""
        self.outstanding_by_model: dict[str, int] = {}
        self.capacity: dict[str, int] = {}
        """Triton model -> requests it takes before refusing (only where known)."""
        self.last_pick = 0
        self.unreachable_since: float | None = None
        self.retiring = False
        """No longer resolved by DNS: takes no new requests, dropped once idle."""
        self.requests_total = 0
        self.failures_total = 0

    def load(self, model: str) -> float:
        return self.outstanding + self.queued.get(model, 0.0)

    def has_room(self, model: str) -> bool:
        limit = self.capacity.get(model)
        return limit is None or self.outstanding_by_model.get(model, 0) < limit

    def acquire(self, model: str) -> None:
        self.outstanding += 1
        self.outstanding_by_model[model] = self.outstanding_by_model.get(model, 0) + 1

    def release(self, model: str) -> None:
        self.outstanding -= 1
        left = self.outstanding_by_model.get(model, 1) - 1
        if left > 0:
            self.outstanding_by_model[model] = left
        else:
            self.outstanding_by_model.pop(model, None)

    def set_cards(self, cards: Sequence[ModelCard], now: float) -> None:
        self.cards = tuple(cards)
        self.models = frozenset(card.triton_model for card in cards)
        self.capacity = {
            card.triton_model: card.capacity for card in cards if card.capacity is not None
        }
        self.models_fetched_at = now


class EndpointPool:
    """The endpoints of the configured targets and of servers joined at run time.

    Lifecycle: `start()` resolves the targets, probes every endpoint once and starts the
    health task (idempotent; callers start it on first use, inside the serving event loop).
    `close()` stops the task and closes every endpoint client.
    """

    def __init__(
        self,
        targets: Sequence[EndpointTarget],
        client_factory: ClientFactory,
        config: RoutingConfig | None = None,
        *,
        queue_probe: QueueProbe | None = None,
        resolver: Resolver = resolve_host,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not targets:
            raise ValueError("at least one Triton endpoint is required")
        for target in targets:  # fail at start-up, not on the first request
            split_host_port(target.url.removeprefix(DNS_PREFIX))
        self.targets = tuple(targets)
        self._factory = client_factory
        self.config = config or RoutingConfig()
        self._queue_probe = queue_probe
        self._resolver = resolver
        self.clock = clock
        # Owner: the event loop. Address -> endpoint, in target order.
        self._endpoints: dict[str, Endpoint] = {}
        # Servers that registered at run time (`add_endpoint`), beside the fixed targets.
        self._joined: dict[str, EndpointTarget] = {}
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every endpoint once and start the health task (idempotent)."""
        if self._started:
            return
        async with self._start_lock:
            if self._started or self._closed:
                return
            await self.refresh()
            self._task = asyncio.create_task(self._run(), name="triton-endpoint-health")
            self._task.add_done_callback(_log_task_end)
            self._started = True

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(
            *(e.client.close() for e in self._endpoints.values()), return_exceptions=True
        )
        closer = getattr(self._queue_probe, "aclose", None)
        if closer is not None:
            await closer()

    async def _run(self) -> None:
        """The health task: a probe round, then sleep until the interval passes or a failed
        request asks for an early round."""
        while not self._closed:
            # Not wait_for: on Python < 3.12 it can swallow the cancellation from close().
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=self.config.health_interval_s)
            finally:
                waiter.cancel()
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # one bad round must not end health checking
                logger.exception("endpoint health round failed")

    # ---- servers that join at run time ----------------------------------------------

    async def add_endpoint(self, address: str) -> None:
        """Add a server that registered itself (`HOST:PORT`); probed at once, so it takes
        requests as soon as it is ready. Raises `ValueError` for a malformed address."""
        split_host_port(address)
        await self.start()
        if address in self._joined:
            return
        self._joined[address] = EndpointTarget(address)
        await self._sync_endpoints()
        await self._probe(self._endpoints[address])

    async def remove_endpoint(self, address: str) -> None:
        """Take a registered server out: no new requests; dropped once its requests end."""
        if self._joined.pop(address, None) is None:
            return
        await self._sync_endpoints()

    # ---- views -----------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """The current endpoints, in target order."""
        return list(self._endpoints.values())

    def ready(self) -> list[Endpoint]:
        """The routable endpoints, in target order."""
        return [e for e in self._endpoints.values() if e.ready]

    def serving(self, model: str, tried: set[str]) -> list[Endpoint]:
        """The routable endpoints that serve `model`, leaving out the addresses `tried`."""
        return [e for e in self.ready() if model in e.models and e.address not in tried]

    # ---- health ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """One round: resolve targets, probe every endpoint, drop idle retired ones."""
        await self._sync_endpoints()
        await asyncio.gather(*(self._probe(e) for e in list(self._endpoints.values())))
        for address, endpoint in list(self._endpoints.items()):
            if endpoint.retiring and endpoint.outstanding == 0:
                logger.info("endpoint %s removed (no longer resolved)", address)
                del self._endpoints[address]
                await endpoint.client.close()

    async def _sync_endpoints(self) -> None:
        wanted: dict[str, tuple[EndpointTarget, str | None]] = {}
        kept: set[str] = set()
        for target in (*self.targets, *self._joined.values()):
            if not target.is_dns:
                wanted[target.url] = (target, _metrics_url(target.url, target.metrics_port))
                continue
            host, port = split_host_port(target.url[len(DNS_PREFIX) :])
            try:
                ips = await asyncio.wait_for(
                    self._resolver(host, port), self.config.probe_timeout_s
                )
            except (OSError, asyncio.TimeoutError) as exc:
                # A DNS blip must not drop working servers: keep what we had.
                logger.warning("cannot resolve %s: %s", target.url, exc)
                kept.update(a for a, e in self._endpoints.items() if e.target == target)
                continue
            for ip in ips:
                address = join_host_port(ip, port)
                wanted[address] = (target, _metrics_url(address, target.metrics_port))
        for address, (target, metrics_url) in wanted.items():
            endpoint = self._endpoints.get(address)
            if endpoint is None:
                logger.info("endpoint %s added", address)
                self._endpoints[address] = Endpoint(
                    address, target, self._factory(address), metrics_url
                )
            elif endpoint.retiring:
                endpoint.retiring = False
        for address, endpoint in self._endpoints.items():
            if address not in wanted and address not in kept and not endpoint.retiring:
                logger.info("endpoint %s no longer resolved; draining", address)
                endpoint.retiring = True
                endpoint.ready = False

    async def _probe(self, endpoint: Endpoint) -> None:
        timeout = self.config.probe_timeout_s
        now = self.clock()
        client = endpoint.client
        ready = await _bounded(client.is_ready(), timeout, False)
        reachable = ready
        if ready:
            due = (
                endpoint.models_fetched_at is None
                or now - endpoint.models_fetched_at >= self.config.model_refresh_s
            )
            if due:
                try:
                    cards = await asyncio.wait_for(client.list_models(), timeout)
                except (UpstreamError, asyncio.TimeoutError) as exc:
                    logger.warning("endpoint %s: cannot list models: %s", endpoint.address, exc)
                    ready = False
                else:
                    endpoint.set_cards(cards, now)
            if ready and endpoint.metrics_url and self._queue_probe is not None:
                try:
                    endpoint.queued = await asyncio.wait_for(
                        self._queue_probe(endpoint.metrics_url), timeout
                    )
                except Exception as exc:  # noqa: BLE001 - queue lengths only refine the choice
                    logger.debug("endpoint %s: no queue metrics: %s", endpoint.address, exc)
                    endpoint.queued = {}
        else:
            # Not ready: is anybody there at all (a model loading) or is it gone?
            try:
                await asyncio.wait_for(client.list_models(), timeout)
                reachable = True
            except Exception:  # noqa: BLE001 - whatever the failure, nobody answered
                reachable = False
        if endpoint.client is not client:
            return  # replaced while we were probing; the next round judges the new one
        why = "not ready" if reachable else "unreachable"
        self.set_ready(endpoint, ready and not endpoint.retiring, why)
        if reachable:
            endpoint.unreachable_since = None
            return
        if endpoint.unreachable_since is None:
            endpoint.unreachable_since = now
        dead_for = now - endpoint.unreachable_since
        if endpoint.outstanding == 0 or dead_for >= self.config.dead_after_s:
            if endpoint.outstanding:
                logger.warning(
                    "endpoint %s unreachable for %.0fs: ending its %d in-flight requests",
                    endpoint.address,
                    dead_for,
                    endpoint.outstanding,
                )
            await self._replace_client(endpoint)

    async def _replace_client(self, endpoint: Endpoint) -> None:
        """A fresh client (new gRPC channels); closing the old one ends its streams."""
        old, endpoint.client = endpoint.client, self._factory(endpoint.address)
        try:
            await old.close()
        except Exception as exc:  # noqa: BLE001 - the new client is in place; the old one is gone either way
            logger.debug("endpoint %s: closing the old client: %s", endpoint.address, exc)

    def set_ready(self, endpoint: Endpoint, ready: bool, why: str) -> None:
        ready = ready and endpoint.models_fetched_at is not None
        if ready == endpoint.ready:
            return
        endpoint.ready = ready
        if ready:
            logger.info(
                "endpoint %s is ready: routing to it (models: %s)",
                endpoint.address,
                ", ".join(sorted(endpoint.models)) or "none",
            )
        else:
            logger.warning("endpoint %s taken out of routing (%s)", endpoint.address, why)

    def record_failure(self, endpoint: Endpoint, model: str, error: UpstreamError) -> None:
        """A request failed there: a server-side failure takes it out (and probes it at once);
        an unknown model has its index read again on the next round."""
        endpoint.failures_total += 1
        if error.server_side:
            self.set_ready(endpoint, False, f"request failed: {error.message}")
            self._wake.set()  # probe now: readmitted at once if it was only a blip
        elif error.code == "model_not_found" and model in endpoint.models:
            endpoint.models = endpoint.models - {model}
            endpoint.models_fetched_at = None  # re-read its index on the next round
            self._wake.set()

    def probe_soon(self) -> None:
        """Run a health round now rather than at the next interval."""
        self._wake.set()


def _metrics_url(address: str, port: int | None) -> str | None:
    if port is None:
        return None
    host, _ = split_host_port(address)
    return f"http://{join_host_port(host, port)}/metrics"


async def _bounded(call: Awaitable[bool], timeout_s: float, default: bool) -> bool:
    try:
        return bool(await asyncio.wait_for(call, timeout_s))
    except Exception:  # noqa: BLE001 - a probe that fails in any way gives the default
        return default


def _log_task_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the endpoint health task stopped", exc_info=task.exception())


class EndpointCollector(Collector):
    """Per-endpoint gauges, read from the pool when Prometheus scrapes."""

    def __init__(self, pool: EndpointPool) -> None:
        self._pool = pool

    def collect(self) -> list[Metric]:
        ready = GaugeMetricFamily(
            "tritonchat_gateway_endpoint_ready",
            "1 while the Triton endpoint takes requests from this gateway",
            labels=["endpoint"],
        )
        outstanding = GaugeMetricFamily(
            "tritonchat_gateway_endpoint_outstanding_requests",
            "Requests this gateway has running on the Triton endpoint",
            labels=["endpoint"],
        )
        requests = CounterMetricFamily(
            "tritonchat_gateway_endpoint_requests",
            "Requests (and retries) this gateway sent to the Triton endpoint",
            labels=["endpoint"],
        )
        failures = CounterMetricFamily(
            "tritonchat_gateway_endpoint_failures",
            "Requests that failed on the Triton endpoint (retried elsewhere when possible)",
            labels=["endpoint"],
        )
        for endpoint in self._pool.endpoints():
            ready.add_metric([endpoint.address], 1.0 if endpoint.ready else 0.0)
            outstanding.add_metric([endpoint.address], float(endpoint.outstanding))
            requests.add_metric([endpoint.address], float(endpoint.requests_total))
            failures.add_metric([endpoint.address], float(endpoint.failures_total))
        return [ready, outstanding, requests, failures]
