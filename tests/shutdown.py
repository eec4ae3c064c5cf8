"""Helpers for the shutdown tests: a real `worldmodels` command in its own session, its
process tree read from /proc, and waiting for processes to go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="reads process trees from Linux's /proc"
)


def start(*args: str) -> subprocess.Popen:
    """``worldmodels ARGS`` in a new session (the test's signals reach only its main process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "worldmodels", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            continue
        for kid in kids:
            out |= {kid, *children(kid)}
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def stop_and_check_nothing_is_left(
    proc: subprocess.Popen, signum: int, workers: int, grace: float = 10
):
    """Wait for ``workers`` children, send ``signum`` to the main process only; returns its
    (exit code, stderr) once the command and every process it started are gone (``grace``
    seconds after the command ended, at most)."""
    try:
        wait_for(lambda: len(children(proc.pid)) >= workers, 120, f"{workers} worker processes")
        time.sleep(1.0)  # let them get to work
        started = children(proc.pid)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
        wait_for(lambda: not any(alive(p) for p in started), grace, "the workers to exit")
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
