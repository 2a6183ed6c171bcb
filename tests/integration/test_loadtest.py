"""Locust against a real tritonserver (echo model) and gateway: the locustfile, the metrics
both servers publish under load, and the experiment runner end to end.

Locust runs in subprocesses: it monkey-patches its process with gevent, which must not
happen to the pytest process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.metrics import metric
from tests.integration.polling import wait_until
from tests.integration.servers import TritonProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCUST = Path(sys.executable).parent / "locust"
CHAT = "/v1/chat/completions"
DEADLINE_S = 30.0


def locust_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)
    return env


def stats_rows(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open() as source:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(source)}


def test_locustfile_runs_both_users_with_ttft_and_tokens_and_the_metrics_move(
        echo_triton: TritonProcess, echo_gateway: str, tmp_path: Path) -> None:
    triton_metrics, gateway_metrics = echo_triton.metrics_url, f"{echo_gateway}/metrics"
    success_before = metric(triton_metrics, "nv_inference_request_success", model="echo")
    chat_before = metric(gateway_metrics, "tritonchat_gateway_requests_total", route=CHAT, status="200")
    lists_before = metric(gateway_metrics, "tritonchat_gateway_requests_total", route="/v1/models")
    prefix = tmp_path / "run"

    locust = subprocess.Popen(
        [str(LOCUST), "-f", str(ROOT / "loadtest" / "chat.py"), "--headless", "-u", "4", "-r", "4", "-t", "3s",
         "--host", echo_gateway, "--triton-grpc", echo_triton.grpc_url, "--csv", str(prefix), "--only-summary",
         "--stop-timeout", "10"],
        cwd=tmp_path, env=locust_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # (The echo model's streams last milliseconds: a live look at the streams gauge is a race,
        # so the gauge itself is tested in tests/unit/loadtest/test_gateway_metrics.py.)
        output, _ = locust.communicate(timeout=60)
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()

    assert locust.returncode == 0, output  # Locust exits 1 when any request failed
    rows = stats_rows(prefix)
    for route, request_type in ((CHAT, "POST"), ("ModelStreamInfer", "gRPC")):
        assert int(rows[(request_type, route)]["Request Count"]) > 0
        assert int(rows[(request_type, route)]["Failure Count"]) == 0
        for kind in ("TTFT", "ITL", "TOK/S"):
            assert int(rows[(kind, route)]["Request Count"]) > 0, (kind, route)
        tokens = float(rows[("TOK/S", route)]["Average Content Size"]) * int(rows[("TOK/S", route)]["Request Count"])
        assert tokens > 0
        ttft = float(rows[("TTFT", route)]["Average Response Time"])
        assert 0 < ttft < float(rows[(request_type, route)]["Average Response Time"])
    assert re.search(rf"{re.escape(CHAT)}: \d+ requests, [1-9]\d* output tokens in .* output tok/s", output)
    assert "ModelStreamInfer:" in output

    ok_requests = sum(int(rows[(t, r)]["Request Count"]) for t, r in (("POST", CHAT), ("gRPC", "ModelStreamInfer")))
    ok_chats = int(rows[("POST", CHAT)]["Request Count"])
    wait_until(lambda: metric(gateway_metrics, "tritonchat_gateway_in_flight_streams", route=CHAT) == 0,
               "the gateway's streams to drain", DEADLINE_S)
    assert metric(triton_metrics, "nv_inference_request_success", model="echo") - success_before >= ok_requests
    assert metric(gateway_metrics, "tritonchat_gateway_requests_total", route=CHAT, status="200") - chat_before \
        >= ok_chats
    assert metric(gateway_metrics, "tritonchat_gateway_request_duration_seconds_count", route=CHAT) >= ok_chats
    assert metric(gateway_metrics, "tritonchat_gateway_time_to_first_byte_seconds_count", route=CHAT) >= ok_chats
    assert metric(gateway_metrics, "tritonchat_gateway_in_flight_requests") == 0
    # The users found the chat model once for all of them.
    assert metric(gateway_metrics, "tritonchat_gateway_requests_total", route="/v1/models") - lists_before == 1


def test_experiment_runner_writes_points_plots_and_report(tmp_path: Path) -> None:
    out, docs = tmp_path / "run", tmp_path / "docs" / "scaling.md"

    done = subprocess.run(
        [sys.executable, "-m", "loadtest.run_experiment",
         "--model-repository", str(ROOT / "tests" / "model_repository"), "--model", "echo",
         "--layout", "cpu:1", "--layout", "cpu:2x1", "--users", "2", "--warmup", "0.5",
         "--duration", "1.5", "--drain-timeout", "5", "--quiet-wait", "0", "--output", str(out), "--docs", str(docs)],
        cwd=ROOT, env=locust_env(), capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    experiment = json.loads((out / "experiment.json").read_text())
    assert experiment["grid"]["layouts"] == ["cpu:1", "cpu:2x1"]
    assert experiment["command"].startswith("python -m loadtest.run_experiment")
    for point in ("cpu-1-gateway-u2", "cpu-2x1-gateway-u2"):
        folder = out / "points" / point
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["client"]["requests"] > 0 and manifest["client"]["failures"] == 0
        assert manifest["client"]["output_tokens_per_s"] > 0
        assert manifest["triton"]["requests"] > 0 and manifest["triton"]["triton_batch_mean"] >= 1
        assert manifest["gateway"]["requests_by_status"].get("200", 0) > 0
        for name in ("requests.csv", "locust_stats.csv", "locust_stats_history.csv", "locust_report.html",
                     "metrics_triton_after.txt", "metrics_gateway_before.txt"):
            assert (folder / name).stat().st_size > 0, name
        assert ("TTFT", CHAT) in stats_rows(folder / "locust")
    two_instances = json.loads((out / "points" / "cpu-2x1-gateway-u2" / "manifest.json").read_text())
    assert two_instances["layout"]["instances"] == 2
    for name in ("throughput.png", "ttft.png", "summary.csv", "report.md"):
        assert (out / name).stat().st_size > 0, name
    text = docs.read_text()
    assert "## Answer" in text and "](scaling/throughput.png)" in text
    assert (docs.parent / "scaling" / "ttft.png").is_file()
