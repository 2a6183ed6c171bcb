"""The markdown report and summary CSV of an experiment run directory.

Reads only `experiment.json` and `points/*/manifest.json` (via `loadtest.plot`'s loaders), so
a report can be rebuilt from a run directory at any time:
`python -m loadtest.report RUN_DIR [--output docs/scaling.md --images docs/scaling]`.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path
from typing import Any

from loadtest.plot import (NOISY_CORES, decode_steps_per_s, load_experiment, load_points, noisy, plot_all,
                           series, throughput)

SUMMARY_COLUMNS = (
    "layout", "description", "instances", "via", "users", "window_s", "requests", "failures",
    "output_tokens_per_s", "client_output_tokens_per_s", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms",
    "itl_p50_ms", "itl_p99_ms", "latency_p50_ms", "latency_p99_ms", "decode_batch_mean",
    "decode_steps_per_s", "triton_batch_mean", "queue_ms_mean", "backend_ttft_ms_mean",
    "running_mean", "waiting_mean", "kv_usage_max", "cpu_utilization_mean", "gateway_first_byte_ms_mean",
    "cpu_busy_cores", "cpu_ours_cores", "cpu_others_cores",
)


def summary_row(point: dict[str, Any]) -> dict[str, Any]:
    client, triton = point["client"], point.get("triton", {})
    gauges, gateway = point.get("gauges", {}), point.get("gateway", {})
    return {
        "layout": point["layout"]["name"], "description": point["layout"]["description"],
        "instances": point["layout"]["instances"], "via": point["via"], "users": point["users"],
        "window_s": point["window_s"], "requests": client["requests"], "failures": client["failures"],
        "output_tokens_per_s": throughput(point), "client_output_tokens_per_s": client["output_tokens_per_s"],
        **{k: client.get(k) for k in ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
                                      "latency_p50_ms", "latency_p99_ms")},
        "decode_batch_mean": triton.get("decode_batch_mean"),
        "decode_steps_per_s": None if (v := decode_steps_per_s(point)) is None else round(v, 2),
        "triton_batch_mean": triton.get("triton_batch_mean"), "queue_ms_mean": triton.get("queue_ms_mean"),
        "backend_ttft_ms_mean": triton.get("ttft_ms_mean"),
        **{k: gauges.get(k) for k in ("running_mean", "waiting_mean", "kv_usage_max", "cpu_utilization_mean")},
        "gateway_first_byte_ms_mean": gateway.get("first_byte_ms_mean"),
        "cpu_busy_cores": point.get("host", {}).get("busy_cores"),
        "cpu_ours_cores": point.get("host", {}).get("ours_cores"),
        "cpu_others_cores": point.get("host", {}).get("others_cores"),
    }


def write_summary_csv(run_dir: Path) -> Path:
    path = run_dir / "summary.csv"
    with path.open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for point in load_points(run_dir):
            writer.writerow(summary_row(point))
    return path


def _fmt(value: Any, digits: int = 0, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{float(value) * scale:,.{digits}f}"


def _pct(new: float, old: float) -> str:
    return f"{(new / old - 1.0) * 100.0:+.0f}%" if old else "n/a"


def _others_note(points: list[dict[str, Any]]) -> str:
    others = [p["host"]["others_cores"] for p in points if p.get("host", {}).get("others_cores") is not None]
    if not others:
        return ""
    return (f" Other work on the machine kept {sum(others) / len(others):.2f} cores busy on average during "
            f"the measured windows (at most {max(others):.2f}; see the last column of the table).")


def _drain_note(points: list[dict[str, Any]]) -> list[str]:
    cut_points = [p for p in points if p.get("drain_cut")]
    cut = [f"`{p['layout']['name']}` {p['via']} {p['users']} users" for p in cut_points]
    if not cut:
        return []
    return [f"Requests still running {cut_points[0].get('drain_timeout_s', '-')} s after the window "
            f"were stopped and are missing from the TTFT and latency figures (they count in the throughput up to "
            f"the window's end) at: {', '.join(cut)}. Their percentiles are optimistic.", ""]


def representative(points: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """One point per (layout, users) to compare layouts with: the gateway's, unless other work
    disturbed it and the same layout and users measured undisturbed straight over gRPC."""
    chosen: dict[tuple[str, int], dict[str, Any]] = {}
    for p in points:
        if throughput(p) is None:
            continue
        key = (p["layout"]["name"], p["users"])
        rank = (noisy(p), p["via"] != "gateway")
        current = chosen.get(key)
        if current is None or rank < (noisy(current), current["via"] != "gateway"):
            chosen[key] = p
    return chosen


def _via_note(p: dict[str, Any], inside: bool = False) -> str:
    if p["via"] == "gateway":
        return ""
    return ", straight over gRPC" if inside else " (straight over gRPC)"


def headline(points: list[dict[str, Any]]) -> list[str]:
    """Which layout gives the most throughput at each user count, and by how much."""
    by_users: dict[int, list[dict[str, Any]]] = {}
    for (_, users), p in representative(points).items():
        by_users.setdefault(users, []).append(p)
    lines = []
    for users, pts in sorted(by_users.items()):
        ranked = sorted(pts, key=lambda p: -float(throughput(p) or 0.0))
        best = ranked[0]
        text = (f"- **{users} user{'s' if users != 1 else ''}**: `{best['layout']['name']}` "
                f"({best['layout']['description']}) leads with {_fmt(throughput(best))} output tok/s{_via_note(best)}")
        if len(ranked) > 1:
            runner_up = ranked[1]
            text += (f", {_pct(float(throughput(best) or 0), float(throughput(runner_up) or 0))} over "
                     f"`{runner_up['layout']['name']}` "
                     f"({_fmt(throughput(runner_up))} tok/s{_via_note(runner_up, True)})")
            b_ttft, r_ttft = best["client"].get("ttft_p50_ms"), runner_up["client"].get("ttft_p50_ms")
            if b_ttft is not None and r_ttft is not None:
                text += f"; TTFT p50 {_fmt(b_ttft / 1000, 2)} s vs {_fmt(r_ttft / 1000, 2)} s"
        flagged = [f"`{q['layout']['name']}`: {q['host']['others_cores']:.2f}" for q in ranked[:2] if noisy(q)]
        if flagged:
            text += f" (caution, other work kept CPU cores busy during this point: {', '.join(flagged)})"
        lines.append(text + ".")
    return lines


def why(points: list[dict[str, Any]]) -> list[str]:
    """The metrics behind the throughput at the highest user count, per instance."""
    lines = []
    top_users = max(p["users"] for p in points)
    for (layout, users), p in representative(points).items():
        if users != top_users or not p.get("triton", {}).get("instances"):
            continue
        t, g = p["triton"], p.get("gauges", {})
        per = [f"instance {n}: {_fmt(i.get('decode_batch_mean'), 1)} seqs/step x "
               f"{_fmt(i.get('decode_steps_per_s'), 1)} steps/s = {_fmt(i.get('output_tokens_per_s'))} tok/s"
               for n, i in enumerate(t["instances"].values())]
        lines.append(
            f"- `{layout}` at {top_users} users{_via_note(p)}: {'; '.join(per)}; together "
            f"{_fmt(t.get('output_tokens_per_s'))} tok/s. Running {_fmt(g.get('running_mean'), 1)} and waiting "
            f"{_fmt(g.get('waiting_mean'), 1)} sequences on average, Triton queue {_fmt(t.get('queue_ms_mean'), 2)} ms "
            f"per request, backend TTFT mean {_fmt(t.get('ttft_ms_mean'))} ms; CPU cores busy with this experiment "
            f"{_fmt(p.get('host', {}).get('ours_cores'), 2)}, with other work "
            f"{_fmt(p.get('host', {}).get('others_cores'), 2)}.")
    return lines or ["- The model publishes no `chatllm_*` metrics; only Triton's own numbers are in the table."]


def contention(points: list[dict[str, Any]]) -> list[str]:
    """Disturbed points next to an undisturbed twin (same layout and users, other way in)."""
    lines = []
    for (layout, _), pts in series(points).items():
        for p in pts:
            if not noisy(p):
                continue
            twins = [q for q in points if q["layout"]["name"] == layout and q["users"] == p["users"] and not noisy(q)]
            steps, twin_steps = decode_steps_per_s(p), decode_steps_per_s(twins[0]) if twins else None
            text = (f"- `{layout}`, {p['users']} user{'s' if p['users'] != 1 else ''}, {p['via']}: other work used "
                    f"{p['host']['others_cores']:.2f} cores; {_fmt(throughput(p), 1)} tok/s at "
                    f"{_fmt(steps, 1)} decode steps/s")
            if twins and steps is not None and twin_steps:
                text += (f", against {_fmt(throughput(twins[0]), 1)} tok/s at {_fmt(twin_steps, 1)} steps/s "
                         f"undisturbed ({twins[0]['via']}): {_pct(steps, twin_steps)} steps/s")
            lines.append(text + ".")
    return lines


def gateway_overhead(points: list[dict[str, Any]]) -> list[str]:
    """TTFT and throughput through the gateway vs straight to Triton, at the same layout and users."""
    groups = series(points)
    lines = []
    for (layout, via), pts in groups.items():
        if via != "gateway" or (layout, "grpc") not in groups:
            continue
        direct = {p["users"]: p for p in groups[(layout, "grpc")]}
        for p in pts:
            d = direct.get(p["users"])
            if d is None:
                continue
            gw, dr = p["client"].get("ttft_p50_ms"), d["client"].get("ttft_p50_ms")
            gi, di = p["client"].get("itl_p50_ms"), d["client"].get("itl_p50_ms")
            mark = " (disturbed)" if noisy(p) or noisy(d) else ""
            lines.append(f"| `{layout}`{mark} | {p['users']} | {_fmt(gw)} | {_fmt(dr)} | "
                         f"{_fmt(None if gw is None or dr is None else gw - dr)} | {_fmt(gi, 1)} | {_fmt(di, 1)} | "
                         f"{_fmt(throughput(p))} | {_fmt(throughput(d))} |")
    if not lines:
        return []
    return ["| layout | users | TTFT p50 gateway ms | TTFT p50 gRPC ms | difference ms | ITL p50 gateway ms | "
            "ITL p50 gRPC ms | tok/s gateway | tok/s gRPC |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *lines]


def table(points: list[dict[str, Any]]) -> list[str]:
    rows = ["| layout | via | users | requests | failures | output tok/s | TTFT p50 s | TTFT p99 s | ITL p50 ms | "
            "decode batch | decode steps/s | running | waiting | Triton batch | queue ms | "
            "CPU cores: ours / others |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        r = summary_row(p)
        rows.append(
            f"| `{r['layout']}` | {r['via']} | {r['users']} | {r['requests']} | {r['failures']} | "
            f"{_fmt(r['output_tokens_per_s'], 1)} | {_fmt(r['ttft_p50_ms'], 2, 1e-3)} | "
            f"{_fmt(r['ttft_p99_ms'], 2, 1e-3)} | {_fmt(r['itl_p50_ms'], 1)} | {_fmt(r['decode_batch_mean'], 1)} | "
            f"{_fmt(r['decode_steps_per_s'], 1)} | {_fmt(r['running_mean'], 1)} | "
            f"{_fmt(r['waiting_mean'], 1)} | {_fmt(r['triton_batch_mean'], 2)} | {_fmt(r['queue_ms_mean'], 2)} | "
            f"{_fmt(r['cpu_ours_cores'], 2)} / {_fmt(r['cpu_others_cores'], 2)} |")
    return rows


def render(run_dir: Path, image_prefix: str = "") -> str:
    """The report; images are linked as `{image_prefix}throughput.png` etc."""
    experiment = load_experiment(run_dir)
    points = load_points(run_dir)
    machine, grid, workload = experiment["machine"], experiment["grid"], experiment["workload"]
    gpus = f"{machine['gpus']} GPU(s)" if machine.get("gpus") else "no GPU"
    out = [
        f"# Scaling `{experiment['model']}`: instance layouts x concurrent users",
        "",
        f"Measured on {machine['cpu_model']} with {machine['cpu_cores']} CPU cores, "
        f"{_fmt(machine.get('memory_gib'), 0)} GiB RAM and {gpus}, on {experiment['started_at'][:10]} "
        f"({experiment['elapsed_s'] / 60:.1f} minutes in all; load average {machine.get('load_average', '-')} "
        "before the run). One run; every number below comes from it."
        + _others_note(points),
        "",
        "## Answer",
        "",
        *headline(points),
        "",
        "## Why (from the metrics)",
        "",
        "Each instance makes `decode batch x decode steps/s` tokens per second; the layout's throughput is the "
        "sum over its instances (`chatllm_output_tokens_total`, `chatllm_decode_steps_total`, "
        "`chatllm_time_to_first_token_seconds`, scraped from Triton's metrics endpoint before and after each "
        "window; points disturbed by other work are left out where an undisturbed twin exists):",
        "",
        *why(points),
        "",
    ]
    disturbed = contention(points)
    if disturbed:
        out += ["## When other work shares the CPU", "",
                f"Points during which other processes kept more than {NOISY_CORES} cores busy (red rings in the "
                "plots), next to the same layout and users measured undisturbed the other way in:", "",
                *disturbed, ""]
    overhead = gateway_overhead(points)
    if overhead:
        out += ["## Gateway overhead", "",
                "The same workload sent straight to Triton's gRPC stream (`TritonGrpcUser`) at the same layout "
                "and users:", "", *overhead, ""]
    out += [
        "## Plots", "",
        f"![throughput]({image_prefix}throughput.png)", "",
        f"![time to first token]({image_prefix}ttft.png)", "",
    ]
    if (run_dir / "batch.png").exists():
        out += [f"![decode batch and step rate]({image_prefix}batch.png)", ""]
    out += [
        "## All points", "",
        *table(points), "",
        "Columns: output tok/s counts the tokens that came out during the window (the backend's "
        "`chatllm_output_tokens_total` when present, else what the clients received); TTFT and ITL are "
        "client-side, over the requests that started in the window; decode batch is sequences per decode "
        "step; running/waiting are means of the backend's gauges sampled every second; Triton batch is "
        "`nv_inference_count / nv_inference_exec_count` (requests per `execute()` call); queue is "
        "`nv_inference_queue_duration_us` per request; CPU cores are the mean cores busy during the window "
        "with this experiment's processes (load generator, gateway, tritonserver and its stubs) and with "
        "everything else on the machine (from /proc).", "",
        *_drain_note(points),
        "## How it was measured", "",
        f"- Command: `{experiment['command']}`",
        f"- Layouts: {', '.join(f'`{name}`' for name in grid['layouts'])}; users: "
        f"{', '.join(map(str, grid['users']))}; via: {', '.join(grid['via'])}.",
        "- Each point: that many closed-loop Locust users "
        f"(run as a library, one process), {grid['warmup_s']:.0f} s warm-up, then a {grid['duration_s']:.0f} s "
        "measured window; requests that started in the window were let finish "
        f"(up to {grid['drain_timeout_s']:.0f} s). tritonserver and the gateway are restarted per layout.",
        f"- Workload: {workload['prompt_count']} prompts (seed {workload['prompt_seed']}), "
        f"{workload['prompt_words_min']}-{workload['prompt_words_max']} words (mean "
        f"{workload['prompt_words_mean']:.0f}), answers of {', '.join(map(str, workload['answer_tokens']))} tokens "
        f"({'ending at EOS when the model stops' if workload['natural_stop'] else 'exactly max_tokens, EOS ignored'}), "
        "greedy.",
        "- The load generator, the gateway and tritonserver share the same machine"
        + (" and its cores, so the clients' own CPU use is part of the picture." if not machine.get("gpus") else "."),
        f"- Before each point the runner waited (at most {grid.get('quiet_wait_s', 0):.0f} s) until other processes "
        f"used fewer than {grid.get('quiet_cores', 0)} CPU cores.",
        f"- Raw data, kept out of git: `{experiment.get('run_dir', run_dir)}` (per point: Locust CSV and HTML report, "
        "`requests.csv`, metric scrapes, `manifest.json`).",
        "",
    ]
    return "\n".join(out)


def write_report(run_dir: Path, output: Path | None = None, images: Path | None = None) -> Path:
    """Write `report.md` (and the summary CSV, plots) into `run_dir`; with `output`, also
    write the report there and copy the plots into `images` (linked relative to `output`)."""
    write_summary_csv(run_dir)
    pngs = plot_all(run_dir)
    (run_dir / "report.md").write_text(render(run_dir))
    if output is None:
        return run_dir / "report.md"
    images = images or output.parent / output.stem
    images.mkdir(parents=True, exist_ok=True)
    for png in pngs:
        shutil.copyfile(png, images / png.name)
    prefix = f"{images.resolve().relative_to(output.parent.resolve())}/"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(run_dir, image_prefix=prefix))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    parser.add_argument("--images", type=Path, default=None, help="copy the plots here (default: next to --output)")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.output, args.images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
