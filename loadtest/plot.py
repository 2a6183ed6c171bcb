"""Plots of an experiment run directory; reads only the files `run_experiment` wrote.

Inputs: `experiment.json` and `points/*/manifest.json`. Outputs (PNG):
- `throughput.png`: output tokens/s of all users vs concurrent users, one line per layout
  (dashed: straight to Triton over gRPC, solid: through the gateway).
- `ttft.png`: time to first token p50 and p99 vs users.
- `batch.png`: why the throughput is what it is: per instance, the mean decode batch and the
  decode steps per second (throughput = instances x batch x steps/s).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

NOISY_CORES = 0.3
"""A point during which other processes kept more CPU cores busy than this is flagged."""

VIA_STYLE = {"gateway": ("-", "o", "via gateway"), "grpc": ("--", "s", "Triton gRPC direct")}


def load_experiment(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "experiment.json").read_text()))


def load_points(run_dir: Path) -> list[dict[str, Any]]:
    """Every point's manifest, ordered by layout (grid order), via and users."""
    points = [json.loads(p.read_text()) for p in sorted((run_dir / "points").glob("*/manifest.json"))]
    order = {name: i for i, name in enumerate(load_experiment(run_dir)["grid"]["layouts"])}
    return sorted(points, key=lambda p: (order.get(p["layout"]["name"], 99), p["via"], p["users"]))


def throughput(point: dict[str, Any]) -> float | None:
    """Output tokens/s in the window: the backend's token counter when it has one, else the clients'."""
    server = point.get("triton", {}).get("output_tokens_per_s")
    return float(server) if server is not None else point["client"].get("output_tokens_per_s")


def series(points: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Points grouped by (layout, via), each group ordered by users."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        groups[(point["layout"]["name"], point["via"])].append(point)
    return {k: sorted(v, key=lambda p: p["users"]) for k, v in groups.items()}


def _label(point: dict[str, Any], via: str, vias: set[str]) -> str:
    label = f"{point['layout']['name']} ({point['layout']['description']})"
    return f"{label}, {VIA_STYLE[via][2]}" if len(vias) > 1 else label


def _setup_axes(ax: Any, users: list[int], ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(users)
    ax.set_xticklabels([str(u) for u in users])
    ax.minorticks_off()
    ax.set_xlabel("concurrent users (each sends its next request when the last one ends)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def plot_all(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the three PNGs into `out_dir` (default: `run_dir`); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = out_dir or run_dir
    out.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment(run_dir)
    points = load_points(run_dir)
    groups = series(points)
    users = sorted({p["users"] for p in points})
    vias = {p["via"] for p in points}
    layouts = list(dict.fromkeys(p["layout"]["name"] for p in points))
    colors = {name: f"C{i}" for i, name in enumerate(layouts)}
    machine = experiment["machine"]
    subtitle = (f"{experiment['model']} on {machine['cpu_cores']} CPU cores"
                + (f", {machine['gpus']} GPU(s)" if machine.get("gpus") else ", no GPU")
                + f"; {experiment['grid']['duration_s']:.0f} s per point")
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for (layout, via), pts in groups.items():
        style, marker, _ = VIA_STYLE[via]
        xy = [(p["users"], y) for p in pts if (y := throughput(p)) is not None]
        xs, ys = [x for x, _ in xy], [y for _, y in xy]
        ax.plot(xs, ys, linestyle=style, marker=marker, color=colors[layout], label=_label(pts[0], via, vias))
        _ring_noisy(ax, [(p["users"], throughput(p)) for p in pts if noisy(p)])
        if via == "gateway" or len(vias) == 1:
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=8, color=colors[layout])
    _setup_axes(ax, users, "output tokens / s (all users together)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput by layout\n{subtitle}", fontsize=11)
    _legend(ax, points)
    fig.tight_layout()
    paths.append(out / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, key, title in ((axes[0], "ttft_p50_ms", "median (p50)"), (axes[1], "ttft_p99_ms", "p99")):
        for (layout, via), pts in groups.items():
            style, marker, _ = VIA_STYLE[via]
            xy = [(p["users"], p["client"][key] / 1000.0) for p in pts if p["client"].get(key) is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], linestyle=style, marker=marker, color=colors[layout],
                    label=_label(pts[0], via, vias))
            _ring_noisy(ax, [(p["users"], p["client"][key] / 1000.0) for p in pts
                             if noisy(p) and p["client"].get(key) is not None])
        _setup_axes(ax, users, "time to first token, s (log scale)")
        ax.set_yscale("log")
        ax.set_title(f"Time to first token, {title}", fontsize=11)
    _legend(axes[0], points)
    fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    paths.append(out / "ttft.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    engine_points = [p for p in points if p.get("triton", {}).get("decode_steps")]
    if engine_points:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
        for (layout, via), pts in groups.items():
            style, marker, _ = VIA_STYLE[via]
            for ax, value in ((axes[0], lambda p: p["triton"].get("decode_batch_mean")), (axes[1], decode_steps_per_s)):
                xy = [(p["users"], y) for p in pts if p.get("triton", {}).get("decode_steps") and (y := value(p))]
                ax.plot([x for x, _ in xy], [y for _, y in xy], linestyle=style, marker=marker,
                        color=colors[layout], label=_label(pts[0], via, vias))
                _ring_noisy(ax, [(p["users"], y) for p in pts
                                 if noisy(p) and p.get("triton", {}).get("decode_steps") and (y := value(p))])
        _setup_axes(axes[0], users, "sequences per decode step (all instances)")
        axes[0].set_title("Mean decode batch", fontsize=11)
        _setup_axes(axes[1], users, "decode steps / s (all instances together)")
        axes[1].set_title("Decode steps per second", fontsize=11)
        _legend(axes[0], points)
        fig.suptitle("Why: output tokens/s ~ decode batch x decode steps/s (chatllm_* metrics)\n" + subtitle,
                     fontsize=9)
        fig.tight_layout()
        paths.append(out / "batch.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _ring_noisy(ax: Any, xy: list[tuple[int, float | None]]) -> None:
    """Red rings around points during which other work kept CPU cores busy."""
    xy = [(x, y) for x, y in xy if y is not None]
    if xy:
        ax.plot([x for x, _ in xy], [y for _, y in xy], linestyle="none", marker="o", markersize=14,
                fillstyle="none", color="red")


def _legend(ax: Any, points: list[dict[str, Any]]) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if any(noisy(p) for p in points):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=10, fillstyle="none", color="red"))
        labels.append(f"other work used > {NOISY_CORES} CPU cores meanwhile")
    ax.legend(handles, labels, fontsize=8)


def decode_steps_per_s(point: dict[str, Any]) -> float | None:
    """Decode steps per second of all the model's instances together."""
    steps, window = point.get("triton", {}).get("decode_steps"), point.get("window_s")
    return float(steps) / float(window) if steps and window else None


def noisy(point: dict[str, Any]) -> bool:
    """Other processes kept more than NOISY_CORES busy during the point's window."""
    return float(point.get("host", {}).get("others_cores") or 0.0) > NOISY_CORES
