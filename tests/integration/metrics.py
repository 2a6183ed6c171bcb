"""Reading a server's Prometheus page in a test: Triton's `/metrics` or the gateway's.

Parsed with `loadtest.scrape.Scrape` (prometheus_client's parser), as the load tests read them.
"""

from __future__ import annotations

import httpx

from loadtest.scrape import Scrape

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
