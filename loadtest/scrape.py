"""Read Prometheus text from Triton (:8002/metrics) and the gateway (/metrics), and turn
two scrapes around a measurement window into the numbers that explain it.

Triton's own families (per model; see Triton's metrics docs):
- `nv_inference_request_success` / `_failure`: finished requests.
- `nv_inference_count` / `nv_inference_exec_count`: requests and `execute()` calls, so their
  ratio is the mean batch Triton's dynamic batcher handed to the backend per call.
- `nv_inference_queue_duration_us`: time requests waited in Triton's queue (summed).
- `nv_inference_compute_infer_duration_us`: time in `execute()` (summed). A decoupled backend
  returns from `execute()` at once and streams later, so this stays small by design.
The chatllm backend's families (one series per `instance`, summed here):
- `chatllm_output_tokens_total`, `chatllm_decode_steps_total`: tokens out and decode steps; the
  first token of each request comes from its prefill, so the mean decode batch is
  `(tokens - first tokens) / steps`.
- `chatllm_time_to_first_token_seconds` (histogram), `chatllm_running_sequences`,
  `chatllm_waiting_sequences`, `chatllm_kv_cache_usage_ratio` (gauges).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def _named(sample_name: str, name: str) -> bool:
    # prometheus_client's parser names counter samples `<family>_total` even where the
    # exposition (Triton's `nv_inference_count`) has no suffix: accept both spellings.
    return sample_name == name or sample_name == name + "_total"


@dataclass(frozen=True)
class Scrape:
    """All samples of one scrape, keyed by (sample name, labels)."""

    samples: dict[SampleKey, float]
    at: float = 0.0

    @classmethod
    def parse(cls, text: str, at: float = 0.0) -> Scrape:
        samples: dict[SampleKey, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return cls(samples, at)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if _named(n, name) and wanted <= ls)

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(_named(n, name) and wanted <= ls for (n, ls) in self.samples)

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Samples named `name` (matching `labels`) summed per value of `label`."""
        wanted = set(labels.items())
        out: dict[str, float] = defaultdict(float)
        for (n, ls), v in self.samples.items():
            if _named(n, name) and wanted <= ls:
                out[dict(ls).get(label, "")] += v
        return dict(out)


def fetch(url: str, at: float = 0.0, timeout_s: float = 10.0) -> tuple[Scrape, str]:
    """GET a metrics endpoint; returns the parsed scrape and the raw text."""
    text = httpx.get(url, timeout=timeout_s).text
    return Scrape.parse(text, at), text


def _ratio(num: float, den: float, scale: float = 1.0, digits: int = 3) -> float | None:
    return round(num / den * scale, digits) if den else None


def triton_window(before: Scrape, after: Scrape, model: str, window_s: float) -> dict[str, Any]:
    """What Triton and the backend did for `model` between two scrapes."""

    def delta(name: str, **labels: str) -> float:
        return after.total(name, model=model, **labels) - before.total(name, model=model, **labels)

    requests = delta("nv_inference_request_success")
    inferences, executions = delta("nv_inference_count"), delta("nv_inference_exec_count")
    out: dict[str, Any] = {
        "requests": requests,
        "failures": delta("nv_inference_request_failure"),
        "inferences": inferences,
        "executions": executions,
        "triton_batch_mean": _ratio(inferences, executions, digits=2),
        "queue_ms_mean": _ratio(delta("nv_inference_queue_duration_us"), inferences, 1e-3),
        "compute_infer_ms_mean": _ratio(delta("nv_inference_compute_infer_duration_us"), inferences, 1e-3),
    }
    if not after.has("chatllm_output_tokens_total", model=model):
        return out
    tokens, steps = delta("chatllm_output_tokens_total"), delta("chatllm_decode_steps_total")
    first = delta("chatllm_time_to_first_token_seconds_count")
    per_instance: dict[str, dict[str, float | None]] = {}
    tokens_by = _delta_by(before, after, "chatllm_output_tokens_total", model)
    steps_by = _delta_by(before, after, "chatllm_decode_steps_total", model)
    first_by = _delta_by(before, after, "chatllm_time_to_first_token_seconds_count", model)
    for instance in sorted(tokens_by):
        t, s, f = tokens_by[instance], steps_by.get(instance, 0.0), first_by.get(instance, 0.0)
        per_instance[instance] = {
            "output_tokens": t, "decode_steps": s,
            "decode_batch_mean": _ratio(t - f, s, digits=2),
            "decode_steps_per_s": _ratio(s, window_s, digits=2),
            "output_tokens_per_s": _ratio(t, window_s, digits=2),
        }
    out.update({
        "output_tokens": tokens,
        "output_tokens_per_s": _ratio(tokens, window_s, digits=2),
        "decode_steps": steps,
        "decode_batch_mean": _ratio(tokens - first, steps, digits=2),
        "first_tokens": first,
        "ttft_ms_mean": _ratio(delta("chatllm_time_to_first_token_seconds_sum"), first, 1e3, digits=1),
        "preemptions": delta("chatllm_preemptions_total"),
        "instances": per_instance,
    })
    return out


def _delta_by(before: Scrape, after: Scrape, name: str, model: str) -> dict[str, float]:
    b = before.by(name, "instance", model=model)
    return {k: v - b.get(k, 0.0) for k, v in after.by(name, "instance", model=model).items()}


def gateway_window(before: Scrape, after: Scrape, route: str = "/v1/chat/completions") -> dict[str, Any]:
    """The gateway's requests, latency and time to first byte on `route` between two scrapes."""

    def delta(name: str, **labels: str) -> float:
        return after.total(name, route=route, **labels) - before.total(name, route=route, **labels)

    statuses = {k: v - before.by("tritonchat_gateway_requests_total", "status", route=route).get(k, 0.0)
                for k, v in after.by("tritonchat_gateway_requests_total", "status", route=route).items()}
    return {
        "requests_by_status": {k: v for k, v in sorted(statuses.items()) if v},
        "request_ms_mean": _ratio(delta("tritonchat_gateway_request_duration_seconds_sum"),
                                  delta("tritonchat_gateway_request_duration_seconds_count"), 1e3, 1),
        "first_byte_ms_mean": _ratio(delta("tritonchat_gateway_time_to_first_byte_seconds_sum"),
                                     delta("tritonchat_gateway_time_to_first_byte_seconds_count"), 1e3, 1),
    }


def gauge_means(triton: Sequence[Scrape], gateway: Sequence[Scrape], model: str,
                route: str = "/v1/chat/completions") -> dict[str, float | None]:
    """Means over periodic scrapes of the gauges that show load (running and waiting summed
    over instances; KV-cache use is the fullest instance's)."""

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 2) if values else None

    def present(name: str) -> list[Scrape]:
        return [s for s in triton if s.has(name, model=model)]

    kv = [max(s.by("chatllm_kv_cache_usage_ratio", "instance", model=model).values())
          for s in present("chatllm_kv_cache_usage_ratio")]
    return {
        "running_mean": mean([s.total("chatllm_running_sequences", model=model)
                              for s in present("chatllm_running_sequences")]),
        "waiting_mean": mean([s.total("chatllm_waiting_sequences", model=model)
                              for s in present("chatllm_waiting_sequences")]),
        "kv_usage_max": round(max(kv), 4) if kv else None,
        "cpu_utilization_mean": mean([s.total("nv_cpu_utilization") for s in triton if s.has("nv_cpu_utilization")]),
        "gateway_streams_mean": mean([s.total("tritonchat_gateway_in_flight_streams", route=route)
                                      for s in gateway if s.has("tritonchat_gateway_in_flight_streams")]),
        "samples": len(triton),
    }
