"""Metric scrapes around a window turn into the numbers that explain it."""

from __future__ import annotations

import pytest

from loadtest.scrape import Scrape, gateway_window, gauge_means, triton_window

TRITON_BEFORE = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 10
nv_inference_request_success{model="other",version="1"} 99
# TYPE nv_inference_count counter
nv_inference_count{model="m",version="1"} 10
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="m",version="1"} 10
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="m",version="1"} 1000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="m",version="1"} 500
# TYPE chatllm_output_tokens_total counter
chatllm_output_tokens_total{instance="m_0_0",model="m",version="1"} 100
chatllm_output_tokens_total{instance="m_0_1",model="m",version="1"} 50
# TYPE chatllm_decode_steps_total counter
chatllm_decode_steps_total{instance="m_0_0",model="m",version="1"} 90
chatllm_decode_steps_total{instance="m_0_1",model="m",version="1"} 45
# TYPE chatllm_time_to_first_token_seconds histogram
chatllm_time_to_first_token_seconds_count{instance="m_0_0",model="m",version="1"} 10
chatllm_time_to_first_token_seconds_sum{instance="m_0_0",model="m",version="1"} 1.0
chatllm_time_to_first_token_seconds_count{instance="m_0_1",model="m",version="1"} 5
chatllm_time_to_first_token_seconds_sum{instance="m_0_1",model="m",version="1"} 0.5
"""

TRITON_AFTER = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 30
nv_inference_request_success{model="other",version="1"} 199
# TYPE nv_inference_count counter
nv_inference_count{model="m",version="1"} 30
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="m",version="1"} 15
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="m",version="1"} 41000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="m",version="1"} 2500
# TYPE chatllm_output_tokens_total counter
chatllm_output_tokens_total{instance="m_0_0",model="m",version="1"} 510
chatllm_output_tokens_total{instance="m_0_1",model="m",version="1"} 260
# TYPE chatllm_decode_steps_total counter
chatllm_decode_steps_total{instance="m_0_0",model="m",version="1"} 190
chatllm_decode_steps_total{instance="m_0_1",model="m",version="1"} 95
# TYPE chatllm_time_to_first_token_seconds histogram
chatllm_time_to_first_token_seconds_count{instance="m_0_0",model="m",version="1"} 20
chatllm_time_to_first_token_seconds_sum{instance="m_0_0",model="m",version="1"} 4.0
chatllm_time_to_first_token_seconds_count{instance="m_0_1",model="m",version="1"} 15
chatllm_time_to_first_token_seconds_sum{instance="m_0_1",model="m",version="1"} 2.5
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
