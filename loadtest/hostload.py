"""How busy the machine's CPUs were during a window, and how much of that was not us.

On a shared machine a measurement is only as good as the quiet around it. `CpuSnapshot.take()`
reads `/proc/stat` (all CPU time) and the CPU time of this process and all its descendants
(tritonserver, its Python backend stubs, the gateway); the difference of two snapshots says
how many cores the experiment used and how many other work took. Linux only; elsewhere the
numbers are None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> set[int]:
    """`root` and every process below it (from /proc; empty where /proc is missing)."""
    children: dict[int, list[int]] = {}
    if not Path("/proc").is_dir():
        return set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass(frozen=True)
class CpuSnapshot:
    """Busy CPU seconds of the whole machine and of this process tree, at one moment."""

    busy_s: float
    ours_s: float

    @classmethod
    def take(cls) -> CpuSnapshot | None:
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, *rest = (int(x) for x in first[1:])
        steal = rest[0] if rest else 0
        busy = (user + nice + system + irq + softirq + steal) / _TICKS
        ours = 0.0
        for pid in descendants(os.getpid()):
            fields = _stat_fields(str(pid))
            if fields is not None:  # utime and stime are fields 14 and 15 of the full line
                ours += (int(fields[11]) + int(fields[12])) / _TICKS
        return cls(busy, ours)


def cpu_window(before: CpuSnapshot | None, after: CpuSnapshot | None, window_s: float) -> dict[str, float | None]:
    """Cores in use on average between two snapshots: all, ours, and everything else."""
    if before is None or after is None or window_s <= 0:
        return {"busy_cores": None, "ours_cores": None, "others_cores": None}
    busy = (after.busy_s - before.busy_s) / window_s
    ours = (after.ours_s - before.ours_s) / window_s
    return {"busy_cores": round(busy, 2), "ours_cores": round(ours, 2), "others_cores": round(max(0.0, busy - ours), 2)}


def wait_for_quiet(max_other_cores: float, timeout_s: float, sample_s: float = 3.0,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, float | None]:
    """Sample the CPU use of other processes every `sample_s` until it is below
    `max_other_cores` or `timeout_s` has passed; returns the last sample and the time spent."""
    start = time.perf_counter()
    others: float | None = None
    while True:
        before = CpuSnapshot.take()
        t0 = time.perf_counter()
        sleep(sample_s)  # the sampling window itself
        after = CpuSnapshot.take()
        others = cpu_window(before, after, time.perf_counter() - t0)["others_cores"]
        waited = time.perf_counter() - start
        if others is None or others < max_other_cores or waited >= timeout_s:
            return {"others_cores_before": others, "quiet_wait_s": round(waited, 1)}


def reap(pids: set[int], timeout_s: float = 15.0, sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Wait up to `timeout_s` for the processes `pids` (ones this program started) to exit, then
    SIGKILL the rest; returns the pids that had to be killed."""
    import signal

    def alive() -> list[int]:
        return [pid for pid in sorted(pids) if Path(f"/proc/{pid}").exists()
                and (_stat_fields(str(pid)) or ["Z"])[0] != "Z"]

    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        sleep(0.2)  # polling interval
    survivors = alive()
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors
