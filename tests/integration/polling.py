"""Waiting on a condition with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

POLL_INTERVAL_S = 0.05


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0,
               alive: subprocess.Popen[str] | None = None) -> float:
    """Poll until `condition` holds; returns the seconds it took. Fails after `timeout_s`, or
    as soon as the `alive` process (whose work the condition waits for) has exited."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"gave up waiting for {what}: the process exited with {alive.returncode}")
        time.sleep(POLL_INTERVAL_S)
    return time.monotonic() - start
