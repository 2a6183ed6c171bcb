"""The experiment's command line and settings, and the machine probes it records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.config import ExperimentConfig, config_from_args
from loadtest.hostload import CpuSnapshot, cpu_window
from loadtest.layouts import Layout
from loadtest.workload import WorkloadOptions
from tritonchat.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]


def test_the_cli_parses_an_experiment_grid() -> None:
    args = build_parser().parse_args([
        "experiment", "--layout", "cpu:1x2", "--layout", "gpu:1@0+1", "--users", "1", "4", "--via", "grpc",
        "gateway", "grpc", "--duration", "7", "--output", "/tmp/x", "--docs", "docs/scaling.md",
        "--answer-tokens", "8,16", "--natural-stop"])

    config = config_from_args(args, "tritonchat experiment ...")

    assert config.layouts == (Layout("cpu", 1, cpu_threads=2), Layout("gpu", 1, (0,), num_gpus=2))
    assert config.users == (1, 4) and config.via == ("grpc", "gateway") and config.duration_s == 7.0
    assert config.output == Path("/tmp/x") and config.docs == Path("docs/scaling.md")
    assert config.workload == WorkloadOptions(answer_tokens=(8, 16), natural_stop=True)
    assert config.model_repository == (ROOT / "model_repository").resolve() or config.model_repository.is_dir()
    config.validate()


def test_without_layouts_the_machine_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    import loadtest.config as module

    monkeypatch.setattr(module, "gpu_count", lambda: 0)
    monkeypatch.setattr(module.os, "cpu_count", lambda: 2)

    config = config_from_args(build_parser().parse_args(["experiment"]))

    assert [lay.name for lay in config.layouts] == ["cpu:1x2", "cpu:2x1"]
    assert config.output.parent == Path("runs")


@pytest.mark.parametrize("change, message", [
    ({"model": "nope"}, "no nope/config.pbtxt"),
    ({"users": ()}, "at least one"),
    ({"users": (0,)}, "positive"),
    ({"via": ("carrier-pigeon",)}, "unknown --via"),
    ({"duration_s": 0.0}, "window"),
])
def test_bad_grids_are_refused(change: dict[str, object], message: str) -> None:
    good = dict(model_repository=ROOT / "model_repository", model="smollm2-135m-instruct",
                layouts=(Layout("cpu", 1),))
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**{**good, **change}).validate()  # type: ignore[arg-type]


def test_the_cli_help_does_not_load_locust() -> None:
    code = ("import sys; from tritonchat.cli import build_parser; build_parser(); "
            "sys.exit(int('locust' in sys.modules or 'gevent' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_cpu_window_splits_ours_from_others() -> None:
    assert cpu_window(CpuSnapshot(100.0, 10.0), CpuSnapshot(120.0, 25.0), 10.0) == {
        "busy_cores": 2.0, "ours_cores": 1.5, "others_cores": 0.5}
    assert cpu_window(None, CpuSnapshot(1.0, 1.0), 1.0)["busy_cores"] is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc only")
def test_a_cpu_snapshot_counts_this_process() -> None:
    before = CpuSnapshot.take()
    sum(i * i for i in range(200_000))
    after = CpuSnapshot.take()

    assert before is not None and after is not None
    assert after.ours_s >= before.ours_s and after.busy_s >= before.busy_s


def test_waiting_for_quiet_stops_at_the_deadline_or_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    import loadtest.hostload as hostload

    busy = iter([CpuSnapshot(0.0, 0.0), CpuSnapshot(2.0, 0.0), CpuSnapshot(2.0, 0.0), CpuSnapshot(2.1, 0.0)])
    monkeypatch.setattr(hostload.CpuSnapshot, "take", classmethod(lambda cls: next(busy)))
    clock = iter([0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    monkeypatch.setattr(hostload.time, "perf_counter", lambda: next(clock))

    result = hostload.wait_for_quiet(0.3, timeout_s=60.0, sample_s=1.0, sleep=lambda s: None)

    assert result == {"others_cores_before": 0.1, "quiet_wait_s": 2.0}  # 2 cores busy, then 0.1


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc only")
def test_reap_waits_for_exits_and_kills_the_rest() -> None:
    from loadtest.hostload import descendants, reap

    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    try:
        assert stubborn.pid in descendants(__import__("os").getpid())
        quick.wait(timeout=30)

        killed = reap({quick.pid, stubborn.pid}, timeout_s=0.5)

        assert killed == [stubborn.pid]
        assert stubborn.wait(timeout=10) != 0
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
