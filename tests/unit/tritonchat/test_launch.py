"""terminate(): a child goes on SIGINT, and nothing it started outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tritonchat.launch import terminate

# A parent that, like tritonserver with its backend stubs, starts a child and then exits on
# SIGINT without stopping that child.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    sys.exit(0)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited already
    except FileNotFoundError:
        return False


def test_terminate_stops_the_child_and_what_it_left_behind() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, start_new_session=True)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    assert alive(grandchild)

    terminate(parent, timeout_s=10)

    assert parent.returncode == 0, "the parent was stopped with SIGINT, not killed"
    deadline = time.monotonic() + 10
    while alive(grandchild):  # SIGKILL is asynchronous: wait for the kernel, with a deadline
        assert time.monotonic() < deadline, "the grandchild outlived terminate()"
        time.sleep(0.01)


def test_terminate_kills_a_child_that_ignores_sigint() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                               "print(1, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, start_new_session=True)
    assert stubborn.stdout is not None
    stubborn.stdout.readline()  # SIGINT is ignored from here on

    terminate(stubborn, timeout_s=0.5)

    assert stubborn.returncode == -9
    assert not os.path.exists(f"/proc/{stubborn.pid}")
