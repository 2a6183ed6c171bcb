"""Plots, summary CSV and the markdown report, from a run directory written by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.report import headline, render, write_report

LAYOUTS = {"cpu:1x2": ("1 CPU instance x 2 threads", 1), "cpu:2x1": ("2 CPU instances x 1 thread", 2)}
# (layout, users) -> (tok/s, TTFT p50 ms, decode batch per instance)
NUMBERS = {("cpu:1x2", 1): (20.0, 100.0, 1.0), ("cpu:1x2", 4): (50.0, 400.0, 4.0),
           ("cpu:2x1", 1): (15.0, 150.0, 1.0), ("cpu:2x1", 4): (60.0, 300.0, 2.0)}


def manifest(layout: str, via: str, users: int) -> dict[str, Any]:
    tok_s, ttft, batch = NUMBERS[(layout, users)]
    if via == "grpc":
        tok_s, ttft = tok_s * 1.1, ttft - 20.0
    description, instances = LAYOUTS[layout]
    per_instance = {f"m_0_{i}": {"output_tokens": tok_s * 20 / instances, "decode_steps": 100.0,
                                 "decode_batch_mean": batch, "decode_steps_per_s": tok_s / instances / batch,
                                 "output_tokens_per_s": tok_s / instances} for i in range(instances)}
    return {
        "layout": {"name": layout, "description": description, "instances": instances, "kind": "cpu"},
        "via": via, "users": users, "window_s": 20.0,
        "client": {"requests": 10 * users, "failures": 0, "output_tokens_per_s": tok_s - 1.0, "ttft_p50_ms": ttft,
                   "ttft_p90_ms": ttft * 2, "ttft_p99_ms": ttft * 3, "itl_p50_ms": 40.0, "itl_p99_ms": 80.0,
                   "latency_p50_ms": 2000.0, "latency_p99_ms": 4000.0},
        "triton": {"output_tokens_per_s": tok_s, "decode_batch_mean": batch, "decode_steps": tok_s * 20 / batch,
                   "triton_batch_mean": 1.2, "queue_ms_mean": 0.5, "ttft_ms_mean": ttft - 30,
                   "instances": per_instance},
        "gauges": {"running_mean": float(users), "waiting_mean": 0.0, "cpu_utilization_mean": 1.0},
        "gateway": {"first_byte_ms_mean": ttft - 5},
        "host": {"busy_cores": 2.0, "ours_cores": 1.8, "others_cores": 0.2},
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for layout in LAYOUTS:
        for via in ("gateway", "grpc"):
            for users in (1, 4):
                point = run / "points" / f"{layout.replace(':', '-')}-{via}-u{users}"
                point.mkdir(parents=True)
                (point / "manifest.json").write_text(json.dumps(manifest(layout, via, users)))
    (run / "experiment.json").write_text(json.dumps({
        "command": "tritonchat experiment --layout cpu:1x2 --layout cpu:2x1 --users 1 4 --via gateway grpc",
        "model": "m", "run_dir": "runs/x", "started_at": "2026-01-02T03:04:05+00:00", "elapsed_s": 600.0,
        "machine": {"cpu_model": "Test CPU", "cpu_cores": 2, "memory_gib": 24, "gpus": 0, "load_average": "0.1"},
        "grid": {"layouts": list(LAYOUTS), "users": [1, 4], "via": ["gateway", "grpc"], "warmup_s": 5,
                 "duration_s": 20, "drain_timeout_s": 30},
        "workload": {"prompt_seed": 0, "prompt_count": 64, "answer_tokens": [16, 32], "natural_stop": False,
                     "prompt_words_min": 5, "prompt_words_max": 300, "prompt_words_mean": 70.0},
    }))
    return run


def test_the_headline_names_the_winner_per_user_count_and_the_margin(run_dir: Path) -> None:
    from loadtest.plot import load_points

    lines = headline(load_points(run_dir))

    assert len(lines) == 2
    assert lines[0].startswith("- **1 user**: `cpu:1x2`") and "+33% over `cpu:2x1` (15 tok/s)" in lines[0]
    assert lines[1].startswith("- **4 users**: `cpu:2x1`") and "+20% over `cpu:1x2` (50 tok/s)" in lines[1]
    assert "TTFT p50 0.30 s vs 0.40 s" in lines[1]


def test_write_report_makes_plots_csv_and_markdown(run_dir: Path) -> None:
    report = write_report(run_dir)

    text = report.read_text()
    for png in ("throughput.png", "ttft.png", "batch.png"):
        assert (run_dir / png).stat().st_size > 10_000
        assert f"]({png})" in text
    assert "## Gateway overhead" in text and "| `cpu:2x1` | 4 | 300 | 280 | 20 |" in text
    assert "instance 1: 2.0 seqs/step x 15.0 steps/s" in text
    assert "Other work on the machine kept 0.20 cores busy" in text
    assert "`tritonchat experiment --layout cpu:1x2" in text
    rows = list(csv.DictReader((run_dir / "summary.csv").open()))
    assert len(rows) == 8
    assert {(r["layout"], r["via"], r["users"], r["output_tokens_per_s"]) for r in rows} >= {
        ("cpu:2x1", "gateway", "4", "60.0"), ("cpu:1x2", "grpc", "1", "22.0")}


def test_a_docs_copy_links_its_own_images(run_dir: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs" / "scaling.md"

    write_report(run_dir, docs)

    assert "](scaling/throughput.png)" in docs.read_text()
    assert sorted(p.name for p in (tmp_path / "docs" / "scaling").iterdir()) == [
        "batch.png", "throughput.png", "ttft.png"]


def test_render_without_backend_metrics_says_so(run_dir: Path) -> None:
    for path in run_dir.glob("points/*/manifest.json"):
        data = json.loads(path.read_text())
        data["triton"] = {"triton_batch_mean": 1.0}
        path.write_text(json.dumps(data))

    text = render(run_dir)

    assert "publishes no `chatllm_*` metrics" in text
    assert "- **4 users**: `cpu:2x1`" in text  # from the clients' token counts


def test_points_whose_drain_was_cut_are_named(run_dir: Path) -> None:
    path = run_dir / "points" / "cpu-2x1-gateway-u4" / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "drain_cut": True, "drain_timeout_s": 30.0}))

    text = render(run_dir)

    assert "Requests still running 30.0 s after the window were stopped" in text
    assert "at: `cpu:2x1` gateway 4 users." in text


def test_the_headline_warns_when_other_work_was_busy(run_dir: Path) -> None:
    from loadtest.plot import load_points

    path = run_dir / "points" / "cpu-1x2-gateway-u4" / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "host": {"others_cores": 1.01}}))

    lines = headline(load_points(run_dir))

    # The undisturbed gRPC point of the same layout and users stands in for the gateway's.
    assert "+9% over `cpu:1x2` (55 tok/s, straight over gRPC)" in lines[1] and "caution" not in lines[1]
    text = render(run_dir)
    assert "## When other work shares the CPU" in text
    assert "- `cpu:1x2`, 4 users, gateway: other work used 1.01 cores; 50.0 tok/s at 12.5 decode steps/s, against " \
           "55.0 tok/s at 13.8 steps/s undisturbed (grpc): -9% steps/s." in text

    grpc = run_dir / "points" / "cpu-1x2-grpc-u4" / "manifest.json"
    grpc.write_text(json.dumps({**json.loads(grpc.read_text()), "host": {"others_cores": 0.5}}))
    lines = headline(load_points(run_dir))
    assert "caution, other work kept CPU cores busy during this point: `cpu:1x2`: 1.01" in lines[1]
    assert "caution" not in lines[0]
