"""Reading a server's Prometheus page in a test (Triton's `/metrics` or the gateway's), and
watching the running gauge while a client disconnects mid-stream.

Parsed with `loadtest.scrape.Scrape` (prometheus_client's parser), as the load tests read them.
"""

from __future__ import annotations

from typing import Any

import httpx

from loadtest.scrape import Scrape

from .polling import wait_until
from .servers import TritonProcess


def scrape(url: str) -> Scrape:
    return Scrape.parse(httpx.get(url, timeout=10).text)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples `name` whose labels include `labels` (0 when there is none)."""
    return scrape(url).total(name, **labels)


def sample(url: str, name: str, **labels: str) -> float | None:
    """The samples `name` whose labels include `labels`, summed; None when there is none."""
    page = scrape(url)
    return page.total(name, **labels) if page.has(name, **labels) else None


def model_metric(triton: TritonProcess, model: str, name: str, **labels: str) -> float:
    """`name` of `model` on Triton's metrics page (summed over its instances); fails when missing."""
    value = sample(triton.metrics_url, name, model=model, **labels)
    assert value is not None, f"{name} {labels} of {model} missing from {triton.metrics_url}"
    return value


def disconnect_mid_stream(triton: TritonProcess, gateway: str, route: str, body: dict[str, Any], what: str,
                          timeout_s: float) -> None:
    """Stream `body` to `route`, and once text flows and the running gauge counts the sequence,
    disconnect; then wait until the sequence has left the batch (`what` names that wait).

    The gauge is published every few tens of ms: each side is waited for, never read once.
    """
    model = body["model"]
    with httpx.stream("POST", f"{gateway}{route}", json=body, timeout=60) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]  # a few chunks: the generation is running
        assert any(('"content"' if "chat" in route else '"text"') in line for line in seen)
        wait_until(lambda: model_metric(triton, model, "chatllm_running_sequences") >= 1, "the running gauge")
    wait_until(lambda: model_metric(triton, model, "chatllm_running_sequences") == 0, what, timeout_s=timeout_s)
