"""Ends what a local Ray instance left when the command that started it dies, even by SIGKILL.

    python -m worldmodels.distributed.reaper PID

Ray ties its GCS server and raylet to the command (they get a parent-death signal), but the
agents the raylet starts (dashboard agent, runtime-env agent) and idle workers are orphaned
instead: they notice the raylet is gone, then wait up to a minute on the dead GCS before they
exit. This process watches the command ``PID``: while it lives, it notes every process below
it (again and again, since Ray starts agents and workers after ``ray.init`` returns); once it
is gone, it ends those that still run (the same processes: the start time is checked, so a
reused PID is never hit) and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0  # between SIGTERM and SIGKILL
OWNER_VARIABLE = "WORLDMODELS_RAY_OWNER"  # set by the command: its PID, inherited by Ray's


def marked(owner: int, since: float) -> dict[int, float]:
    """Processes carrying ``OWNER_VARIABLE=owner`` started after ``since`` (a process the
    polls missed, orphaned when the command died, still has the command's mark)."""
    found: dict[int, float] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "create_time"]):
        with contextlib.suppress(psutil.Error):
            if (
                proc.pid != me
                and proc.info["create_time"] >= since
                and proc.environ().get(OWNER_VARIABLE) == str(owner)
            ):
                found[proc.pid] = proc.info["create_time"]
    return found


def watch(pid: int, poll_s: float = POLL_S) -> dict[int, float]:
    """Until ``pid`` ends: every process below it seen so far, ``{pid: start time}``."""
    me = os.getpid()
    seen: dict[int, float] = {}
    try:
        command = psutil.Process(pid)
        while command.is_running() and command.status() != psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                for proc in command.children(recursive=True):
                    if proc.pid != me:
                        seen[proc.pid] = proc.create_time()
            time.sleep(poll_s)
    except psutil.Error:  # the command is gone
        pass
    return seen


def end(seen: dict[int, float]) -> list[int]:
    """SIGTERM, then SIGKILL after a grace period, to the processes of ``seen`` still running;
    returns the PIDs that were ended."""
    live = []
    for pid, started in seen.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    for proc in live:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, still = psutil.wait_procs(live, timeout=GRACE_S)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [proc.pid for proc in live]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m worldmodels.distributed.reaper PID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the command, not for this
    owner = int(args[0])
    try:
        since = psutil.Process(owner).create_time()
    except psutil.Error:
        return 0
    seen = watch(owner)
    end({**marked(owner, since), **seen})
    return 0


if __name__ == "__main__":
    sys.exit(main())
