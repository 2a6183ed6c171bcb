"""Metric scrapes around a window turn into the numbers that explain it."""

from __future__ import annotations

import pytest

from loadtest.scrape import Scrape, gateway_window, gauge_means, triton_window


def triton_counters(success: int, other: int, executions: int, queue_us: int, compute_us: int,
                    tokens: tuple[int, int], steps: tuple[int, int], ttft_count: tuple[int, int],
                    ttft_sum: tuple[float, float]) -> str:
    """Triton's counters for model "m" (two instances) and another model, as Triton writes them."""
    per_instance = {"chatllm_output_tokens_total": tokens, "chatllm_decode_steps_total": steps,
                    "chatllm_time_to_first_token_seconds_count": ttft_count,
                    "chatllm_time_to_first_token_seconds_sum": ttft_sum}
    lines = ["# TYPE nv_inference_request_success counter",
             f'nv_inference_request_success{{model="m",version="1"}} {success}',
             f'nv_inference_request_success{{model="other",version="1"}} {other}']
    for name, value in (("nv_inference_count", success), ("nv_inference_exec_count", executions),
                        ("nv_inference_queue_duration_us", queue_us),
                        ("nv_inference_compute_infer_duration_us", compute_us)):
        lines += [f"# TYPE {name} counter", f'{name}{{model="m",version="1"}} {value}']
    for name, values in per_instance.items():
        if not name.endswith("_sum"):
            family = name.removesuffix("_count")
            lines.append(f"# TYPE {family} {'histogram' if family != name else 'counter'}")
        lines += [f'{name}{{instance="m_0_{i}",model="m",version="1"}} {v}' for i, v in enumerate(values)]
    return "\n".join(lines) + "\n"


TRITON_BEFORE = triton_counters(10, 99, 10, 1000, 500, (100, 50), (90, 45), (10, 5), (1.0, 0.5))

TRITON_AFTER = triton_counters(30, 199, 15, 41000, 2500, (510, 260), (190, 95), (20, 15), (4.0, 2.5)) + """\
# TYPE chatllm_running_sequences gauge
chatllm_running_sequences{instance="m_0_0",model="m",version="1"} 4
chatllm_running_sequences{instance="m_0_1",model="m",version="1"} 2
# TYPE chatllm_waiting_sequences gauge
chatllm_waiting_sequences{instance="m_0_0",model="m",version="1"} 1
chatllm_waiting_sequences{instance="m_0_1",model="m",version="1"} 0
# TYPE chatllm_kv_cache_usage_ratio gauge
chatllm_kv_cache_usage_ratio{instance="m_0_0",model="m",version="1"} 0.25
chatllm_kv_cache_usage_ratio{instance="m_0_1",model="m",version="1"} 0.5
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.9
"""


def test_counters_are_found_under_the_names_the_server_wrote() -> None:
    scrape = Scrape.parse(TRITON_BEFORE)

    # prometheus_client's parser calls the sample nv_inference_count_total.
    assert scrape.total("nv_inference_count", model="m") == 10
    assert scrape.total("nv_inference_request_success") == 109
    assert scrape.by("chatllm_output_tokens_total", "instance", model="m") == {"m_0_0": 100, "m_0_1": 50}
    assert not scrape.has("chatllm_running_sequences")


def test_triton_window() -> None:
    window = triton_window(Scrape.parse(TRITON_BEFORE), Scrape.parse(TRITON_AFTER), "m", window_s=10.0)

    assert window["requests"] == 20 and window["inferences"] == 20 and window["executions"] == 5
    assert window["triton_batch_mean"] == 4.0
    assert window["queue_ms_mean"] == 2.0  # 40 ms over 20 requests
    assert window["compute_infer_ms_mean"] == 0.1
    assert window["output_tokens"] == 620 and window["output_tokens_per_s"] == 62.0
    assert window["first_tokens"] == 20
    assert window["decode_batch_mean"] == pytest.approx((620 - 20) / 150, abs=0.01)
    assert window["ttft_ms_mean"] == 250.0  # 5 s over 20 first tokens
    first, second = window["instances"]["m_0_0"], window["instances"]["m_0_1"]
    assert first["decode_batch_mean"] == 4.0 and first["decode_steps_per_s"] == 10.0
    assert second["output_tokens_per_s"] == 21.0 and second["decode_batch_mean"] == 4.0


def test_a_model_without_backend_metrics_has_only_tritons_numbers() -> None:
    before = Scrape.parse(TRITON_BEFORE.replace('model="m"', 'model="x"'))
    after = Scrape.parse(TRITON_AFTER.replace('model="m"', 'model="x"'))

    window = triton_window(before, after, "m", 10.0)

    assert window["requests"] == 0 and window["triton_batch_mean"] is None
    assert "output_tokens" not in window


def test_gauge_means_sum_instances_and_take_the_fullest_cache() -> None:
    after = Scrape.parse(TRITON_AFTER)
    idle = Scrape.parse(TRITON_AFTER.replace("} 4\n", "} 0\n").replace("} 2\n", "} 0\n"))
    gateway = [Scrape.parse('tritonchat_gateway_in_flight_streams{route="/v1/chat/completions"} 3\n')]

    means = gauge_means([after, idle], gateway, "m")

    assert means["running_mean"] == 3.0 and means["waiting_mean"] == 1.0
    assert means["kv_usage_max"] == 0.5 and means["cpu_utilization_mean"] == 0.9
    assert means["gateway_streams_mean"] == 3.0 and means["samples"] == 2


def test_gateway_window() -> None:
    before = Scrape.parse("""\
# TYPE tritonchat_gateway_requests counter
tritonchat_gateway_requests_total{method="POST",route="/v1/chat/completions",status="200"} 5
# TYPE tritonchat_gateway_request_duration_seconds histogram
tritonchat_gateway_request_duration_seconds_sum{method="POST",route="/v1/chat/completions"} 5
tritonchat_gateway_request_duration_seconds_count{method="POST",route="/v1/chat/completions"} 5
""")
    after = Scrape.parse("""\
# TYPE tritonchat_gateway_requests counter
tritonchat_gateway_requests_total{method="POST",route="/v1/chat/completions",status="200"} 9
tritonchat_gateway_requests_total{method="POST",route="/v1/chat/completions",status="503"} 1
tritonchat_gateway_requests_total{method="GET",route="/v1/models",status="200"} 7
# TYPE tritonchat_gateway_request_duration_seconds histogram
tritonchat_gateway_request_duration_seconds_sum{method="POST",route="/v1/chat/completions"} 15
tritonchat_gateway_request_duration_seconds_count{method="POST",route="/v1/chat/completions"} 10
""")

    window = gateway_window(before, after)

    assert window["requests_by_status"] == {"200": 4, "503": 1}
    assert window["request_ms_mean"] == 2000.0
    assert window["first_byte_ms_mean"] is None
