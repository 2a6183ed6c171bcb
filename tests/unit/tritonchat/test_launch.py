"""Children of the launcher: stopped with SIGTERM, nothing they started outlives them, they die
with the launcher even when it is SIGKILLed, and SIGINT works in them whoever started us."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tritonchat.launch import set_on_signal, spawn, terminate
from tritonchat.serve import ServeError, ServeOptions, serve

DEADLINE_S = 10.0

# A parent that, like tritonserver with its backend stubs, starts a child and then exits on
# SIGTERM without stopping that child.
PARENT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""

# A launcher that starts one child with `spawn`, says its pid, and waits to be killed.
LAUNCHER = """
import sys, time
from tritonchat.launch import spawn
child = spawn([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(120)
"""

SLEEPER = "import time; time.sleep(120)"
SAYS_SIGINT = ("import signal, time; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
               "flush=True); time.sleep(120)")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited already
    except FileNotFoundError:
        return False


def wait_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while alive(pid):  # signals are asynchronous: wait for the kernel, with a deadline
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_terminate_stops_the_child_and_what_it_left_behind() -> None:
    parent = spawn([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    assert alive(grandchild)

    terminate(parent, timeout_s=10)

    assert parent.returncode == 0, "the parent was stopped with SIGTERM, not killed"
    wait_gone(grandchild, "the grandchild outlived terminate()")


def test_terminate_kills_a_child_that_ignores_sigterm() -> None:
    stubborn = spawn(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print(1, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE)
    assert stubborn.stdout is not None
    stubborn.stdout.readline()  # SIGTERM is ignored from here on

    terminate(stubborn, timeout_s=0.5)

    assert stubborn.returncode == -9
    assert not os.path.exists(f"/proc/{stubborn.pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_child_dies_with_its_launcher_even_when_the_launcher_is_sigkilled() -> None:
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, SLEEPER], stdout=subprocess.PIPE)
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    try:
        assert alive(child)
        launcher.kill()
        launcher.wait()
        wait_gone(child, "the child outlived its SIGKILLed launcher")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ctypes into Linux's libc")
def test_sigint_works_in_children_of_a_launcher_that_inherited_it_ignored() -> None:
    # What `nohup make serve &` does to the launcher: SIGINT ignored, inherited across exec.
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, SAYS_SIGINT], stdout=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    try:
        # The child's own line follows on the same pipe (it inherited the launcher's stdout).
        assert launcher.stdout.readline().strip() == b"True"
    finally:
        launcher.kill()
        launcher.wait()
        wait_gone(child, "the child outlived its launcher")


def test_a_second_serve_on_busy_ports_fails_at_once_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServeError, match=f"127.0.0.1:{port} \\(gateway port\\) is already in use"):
            serve(ServeOptions(model_repository=tmp_path, http_port=0, grpc_port=0, metrics_port=0,
                               gateway_port=port))
        assert time.monotonic() - started < 5


def test_a_stop_signal_sets_the_event_while_the_waiter_holds_its_lock() -> None:
    # As when SIGTERM lands while the main thread is inside stop.wait(): a handler that called
    # stop.set() itself would block forever on the lock the main thread holds.
    stop = threading.Event()
    handler = set_on_signal(stop)

    def land_inside_wait() -> None:
        with stop._cond:  # the lock Event.wait holds between its checks
            handler(signal.SIGTERM, None)

    signalled = threading.Thread(target=land_inside_wait, daemon=True)
    signalled.start()
    signalled.join(10)
    assert not signalled.is_alive(), "the handler blocked on the lock its own thread holds"
    assert stop.wait(10)
