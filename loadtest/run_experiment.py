"""`tritonchat experiment`: measure instance layouts x concurrent users, with one command.

For each layout (a Triton `instance_group`, see `loadtest.layouts`) the runner writes a
temporary model repository variant, starts tritonserver and the gateway on free 127.0.0.1
ports, and for each way in (`gateway`: `ChatUser`, `grpc`: `TritonGrpcUser`) and user count
runs Locust as a library (`Environment`, `create_local_runner`, `stats_history`):

    start N users -> warm-up -> scrape metrics -> measured window (gauges scraped every
    second) -> scrape metrics -> stop (requests in flight may finish) -> write files

then stops both servers. Everything lands in one run directory:

    experiment.json                  grid, machine, exact command, timings
    points/<layout>-<via>-u<N>/      one per point:
        manifest.json                settings and the computed numbers
        requests.csv                 one row per request (TTFT, ITL, tokens, latency)
        locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv
        locust_report.html           Locust's own HTML report
        metrics_{triton,gateway}_{before,after}.txt   raw scrapes around the window
    summary.csv, throughput.png, ttft.png, batch.png, report.md   (`loadtest.plot`, `loadtest.report`)

Locust monkey-patches the process with gevent on import, which is why this module is only
imported by the `experiment` command (and run in a subprocess by the tests).
"""

from __future__ import annotations

import locust  # noqa: F401  - first: gevent must patch the process before ssl/httpx load

import argparse
import csv
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gevent
import requests
from locust.env import Environment
from locust.html import get_html_report
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter, stats_history

from loadtest.config import ExperimentConfig, add_arguments, config_from_args, gpu_count
from loadtest.hostload import CpuSnapshot, cpu_window, descendants, reap, wait_for_quiet
from loadtest.layouts import Layout, LayoutError, write_model_variant
from loadtest.report import write_report
from loadtest.scrape import Scrape, fetch, gateway_window, gauge_means, triton_window
from loadtest.timing import RequestRecord, StreamMeasurement, summarise
from loadtest.users import CHAT_ROUTE, ChatUser, LoadOptions, TritonGrpcUser, reset_prompt_streams
from tritonchat.launch import NotReadyError, TritonProcess, launch_gateway, launch_triton

logger = logging.getLogger(__name__)

USER_CLASSES: dict[str, type[locust.User]] = {"gateway": ChatUser, "grpc": TritonGrpcUser}
GAUGE_INTERVAL_S = 1.0  # how often gauges are sampled during a window


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown CPU"
    memory_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"cpu_model": cpu_model, "cpu_cores": os.cpu_count(), "memory_gib": memory_gib, "gpus": gpu_count(),
            "load_average": load, "python": sys.version.split()[0]}


class _Collector:
    """Keeps the measurement of every finished POST/gRPC request (an `events.request` listener)."""

    def __init__(self) -> None:
        self.measurements: list[tuple[StreamMeasurement, bool]] = []

    def __call__(self, request_type: str, name: str, response_time: float, response_length: int,
                 exception: Exception | None = None, context: dict[str, Any] | None = None, **_: Any) -> None:
        measurement = (context or {}).get("stream")
        if request_type in ("POST", "gRPC") and isinstance(measurement, StreamMeasurement):
            self.measurements.append((measurement, exception is None))


def _records(collector: _Collector, via: str, t0: float, t1: float) -> list[RequestRecord]:
    return [RequestRecord(
        via=via, start_s=round(m.start - t0, 4), ok=ok, ttft_s=m.ttft_s, itl_s=m.itl_s,
        latency_s=round(m.latency_s, 4), output_tokens=m.output_tokens, prompt_tokens=m.prompt_tokens,
        tokens_in_window=round(m.tokens_between(t0, t1), 3), error=m.error or "")
        for m, ok in collector.measurements]


def run_point(config: ExperimentConfig, layout: Layout, via: str, users: int, triton: TritonProcess,
              gateway_url: str, point_dir: Path) -> dict[str, Any]:
    """One (layout, via, users) point; writes its files and returns its manifest."""
    point_dir.mkdir(parents=True, exist_ok=True)
    reset_prompt_streams()
    quiet = wait_for_quiet(config.quiet_cores, config.quiet_wait_s, sleep=gevent.sleep) if config.quiet_wait_s > 0 \
        else {"others_cores_before": None, "quiet_wait_s": 0.0}
    if (quiet["quiet_wait_s"] or 0.0) > 5.0:
        logger.info("waited %.0f s for other work to calm down (now %s cores)", quiet["quiet_wait_s"],
                    quiet["others_cores_before"])
    options = LoadOptions(model=config.model, triton_grpc=triton.grpc_url, triton_model=config.model,
                          request_timeout_s=config.warmup_s + config.duration_s + config.drain_timeout_s + 10.0,
                          workload=config.workload)
    env = Environment(user_classes=[USER_CLASSES[via]], host=gateway_url, parsed_options=options.as_parsed_options(),
                      stop_timeout=config.drain_timeout_s)
    runner = env.create_local_runner()
    collector = _Collector()
    env.events.request.add_listener(collector)
    csv_writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, str(point_dir / "locust"), full_history=True)
    background = [gevent.spawn(stats_history, runner), gevent.spawn(csv_writer.stats_writer)]
    gateway_metrics = f"{gateway_url}/metrics"
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        runner.start(users, spawn_rate=users)
        gevent.sleep(config.warmup_s)  # the warm-up period itself, not a synchronisation
        env.stats.reset_all()
        t0 = time.perf_counter()
        cpu_before = CpuSnapshot.take()
        triton_before, triton_before_text = fetch(triton.metrics_url, t0)
        gateway_before, gateway_before_text = fetch(gateway_metrics, t0)
        samples: tuple[list[Scrape], list[Scrape]] = ([], [])

        def sample_gauges() -> None:
            while True:
                samples[0].append(fetch(triton.metrics_url, time.perf_counter())[0])
                samples[1].append(fetch(gateway_metrics, time.perf_counter())[0])
                gevent.sleep(GAUGE_INTERVAL_S)

        sampler = gevent.spawn(sample_gauges)
        gevent.sleep(max(0.0, config.duration_s - (time.perf_counter() - t0)))  # the measured window
        t1 = time.perf_counter()
        cpu_after = CpuSnapshot.take()
        sampler.kill()
        triton_after, triton_after_text = fetch(triton.metrics_url, t1)
        gateway_after, gateway_after_text = fetch(gateway_metrics, t1)
        drain_start = time.perf_counter()
        runner.stop()  # graceful: the requests in flight finish (up to drain_timeout_s)
        drain_s = time.perf_counter() - drain_start
        window_s = t1 - t0
        records = _records(collector, via, t0, t1)
        with (point_dir / "requests.csv").open("w", newline="") as sink:
            writer = csv.writer(sink)
            writer.writerow(RequestRecord.COLUMNS)
            writer.writerows(r.row() for r in records)
        for name, text in (("triton_before", triton_before_text), ("triton_after", triton_after_text),
                           ("gateway_before", gateway_before_text), ("gateway_after", gateway_after_text)):
            (point_dir / f"metrics_{name}.txt").write_text(text)
        (point_dir / "locust_report.html").write_text(get_html_report(env, show_download_link=False))
        manifest = {
            "layout": {**asdict(layout), "name": layout.name, "description": layout.describe(),
                       "instances": layout.instances},
            "via": via, "users": users, "model": config.model, "started_at": started_at,
            "warmup_s": config.warmup_s, "window_s": round(window_s, 3), "drain_s": round(drain_s, 3),
            # Locust stops the users it waited drain_timeout_s for: their requests are not in requests.csv.
            "drain_cut": drain_s >= config.drain_timeout_s - 0.5, "drain_timeout_s": config.drain_timeout_s,
            "client": summarise(records, window_s),
            "triton": triton_window(triton_before, triton_after, config.model, window_s),
            "gateway": gateway_window(gateway_before, gateway_after, CHAT_ROUTE),
            "gauges": gauge_means(samples[0], samples[1], config.model, CHAT_ROUTE),
            "host": {**cpu_window(cpu_before, cpu_after, window_s), **quiet,
                     "load_average_1m": round(os.getloadavg()[0], 2)},
            "locust": {"requests": env.stats.total.num_requests, "failures": env.stats.total.num_failures,
                       "errors": {str(e.error): e.occurrences for e in env.stats.errors.values()}},
        }
        (point_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        return manifest
    finally:
        runner.quit()
        gevent.killall(background)
        csv_writer_final(csv_writer)
        csv_writer.close_files()


def csv_writer_final(writer: StatsCSVFileWriter) -> None:
    """Rewrite the stats CSV with the final numbers (the writer's loop only runs each second)."""
    writer.requests_csv_filehandle.seek(0)
    writer.requests_csv(writer.requests_csv_writer)
    writer.requests_csv_filehandle.truncate()
    writer.failures_csv_filehandle.seek(0)
    writer.failures_csv(writer.failures_csv_writer)
    writer.failures_csv_filehandle.truncate()


def warm_up(gateway_url: str, model: str, requests_count: int, timeout_s: float = 300.0) -> float:
    """Send `requests_count` short generations at once and wait for them (the first requests of
    a fresh server pay for lazy initialisation); returns the seconds it took."""
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0.0}
    start = time.perf_counter()
    jobs = [gevent.spawn(requests.post, f"{gateway_url}/v1/chat/completions", json=body, timeout=timeout_s)
            for _ in range(requests_count)]
    gevent.joinall(jobs, timeout=timeout_s, raise_error=True)
    for job in jobs:
        if not job.successful() or job.value.status_code != 200:
            raise RuntimeError(f"warm-up request failed: {job.exception or job.value.text[:300]}")
    return time.perf_counter() - start


def run_layout(config: ExperimentConfig, layout: Layout, run_dir: Path) -> dict[str, Any]:
    """Start the servers for `layout`, run its points, stop the servers."""
    started = time.perf_counter()
    result: dict[str, Any] = {"layout": layout.name, "points": []}
    spawned: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="tritonchat-experiment-") as tmp:
        write_model_variant(config.model_repository / config.model, Path(tmp), layout)
        try:
            with launch_triton(Path(tmp)) as triton, launch_gateway([triton.grpc_url]) as gateway_url:
                result["startup_s"] = round(time.perf_counter() - started, 1)
                spawned = descendants(triton.process.pid) - {triton.process.pid}  # the backend stubs
                result["warm_up_s"] = round(warm_up(gateway_url, config.model, 2 * layout.instances), 1)
                logger.info("layout %s ready in %.0f s (Triton log %s)", layout.name, result["startup_s"],
                            triton.log_path)
                for via in config.via:
                    for users in config.users:
                        point = f"{layout.slug}-{via}-u{users}"
                        manifest = run_point(config, layout, via, users, triton, gateway_url,
                                             run_dir / "points" / point)
                        result["points"].append(point)
                        client = manifest["client"]
                        logger.info("%s: %s tok/s, TTFT p50 %s ms, %d requests, %d failures", point,
                                    manifest["triton"].get("output_tokens_per_s", client["output_tokens_per_s"]),
                                    client["ttft_p50_ms"], client["requests"], client["failures"])
                shutil.copyfile(triton.log_path, run_dir / f"tritonserver-{layout.slug}.log")
        except NotReadyError as exc:
            logger.error("layout %s did not start: %s", layout.name, exc)
            result["error"] = str(exc)[:2000]
        # tritonserver exits when its exit timeout expires even if a backend stub has not
        # finished; such a stub lives on (and may burn CPU) unless it is stopped here.
        orphans = reap(spawned)
        if orphans:
            logger.warning("layout %s: %d backend stub(s) outlived tritonserver; killed %s", layout.name,
                           len(orphans), orphans)
        result["stubs_killed_after_exit"] = len(orphans)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def run(config: ExperimentConfig) -> Path:
    """Run the whole grid; returns the run directory (report and plots included)."""
    config.validate()
    run_dir = config.output
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    experiment: dict[str, Any] = {
        "command": config.command, "model": config.model, "model_repository": str(config.model_repository),
        "run_dir": str(run_dir),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "grid": {"layouts": [lay.name for lay in config.layouts],
                 "layout_descriptions": {lay.name: lay.describe() for lay in config.layouts},
                 "users": list(config.users), "via": list(config.via), "warmup_s": config.warmup_s,
                 "duration_s": config.duration_s, "drain_timeout_s": config.drain_timeout_s,
                 "quiet_cores": config.quiet_cores, "quiet_wait_s": config.quiet_wait_s},
        "workload": config.workload.describe(),
        "layouts": [],
    }
    for layout in config.layouts:
        experiment["layouts"].append(run_layout(config, layout, run_dir))
        experiment["elapsed_s"] = round(time.perf_counter() - started, 1)
        (run_dir / "experiment.json").write_text(json.dumps(experiment, indent=1))
    experiment["elapsed_s"] = round(time.perf_counter() - started, 1)
    (run_dir / "experiment.json").write_text(json.dumps(experiment, indent=1))
    if not any(layout["points"] for layout in experiment["layouts"]):
        raise RuntimeError("no point was measured; see experiment.json")
    write_report(run_dir)
    if config.docs is not None:
        write_report(run_dir, config.docs)
    return run_dir


def main(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the experiment `args` describe; `command` is recorded as the way to repeat it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per metrics scrape otherwise
    try:
        config = config_from_args(args, command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
        config.validate()
    except (LayoutError, ValueError) as exc:
        print(f"tritonchat experiment: {exc}", file=sys.stderr)
        return 2
    run_dir = run(config)
    print(f"wrote {run_dir}/report.md" + (f" and {config.docs}" if config.docs else ""))
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m loadtest.run_experiment", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args(), shlex.join(["python", "-m", "loadtest.run_experiment", *sys.argv[1:]])))
