"""Environments spread over forked worker processes, shared by the gymnasium CarRacing and
the ViZDoom batches.

Environment i lives in worker ``i % workers`` as its ``i // workers``-th environment;
``workers=0`` keeps them all in this process; ``None`` means one worker per core (none for
a single environment). ``make(max_steps)`` builds one environment
(anything with ``close()``) and ``play(env, cmd, arg)`` answers ``"reset"`` (arg: a seed) or
``"step"`` (arg: an action) for it. A worker that raises or dies stops the caller with its
traceback or exit code, never a hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path


def _serve(
    conn, make: Callable, play: Callable, num_envs: int, max_steps: int, parent_ends=()
) -> None:
    """A worker's loop: owns ``num_envs`` environments, answers commands for any subset.

    It never outlives the process that started it: it closes the parent's pipe ends it
    inherited through fork (so a dead parent reads as end-of-file here) and, on Linux, gets
    SIGTERM from the kernel when its parent dies (a parent killed by SIGKILL included).
    SIGTERM ends it as Ctrl-C does: its environments are closed (a ViZDoom game ends its
    engine process, which would otherwise be left running).
    """
    for end in parent_ends:
        end.close()
    envs = []
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        _signal_me_when_parent_dies(signal.SIGTERM)
        envs.extend(make(max_steps) for _ in range(num_envs))
        while True:
            cmd, data = conn.recv()
            if cmd == "close":
                _close_all(envs)
                conn.send(("ok", None))
                return
            conn.send(("ok", [play(envs[i], cmd, x) for i, x in data]))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        _close_all(envs)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _close_all(envs: list) -> None:
    while envs:
        with contextlib.suppress(Exception):  # closing the rest matters more than one error
            envs.pop().close()


def _signal_me_when_parent_dies(signum: int) -> None:
    """Linux: have the kernel send ``signum`` here when the parent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        raise KeyboardInterrupt


class EnvWorkers:
    """``num_envs`` environments of one kind (``name`` in error messages), see module doc."""

    def __init__(
        self,
        name: str,
        make: Callable,
        play: Callable,
        num_envs: int,
        max_steps: int,
        workers: int | None,
    ):
        import multiprocessing as mp

        if workers is None:
            workers = 0 if num_envs == 1 else min(num_envs, os.cpu_count() or 1)
        self.name = name
        self.play = play
        self.workers = workers
        self.local = [make(max_steps) for _ in range(num_envs)] if workers == 0 else []
        self.conns, self.procs = [], []
        # fork starts workers in milliseconds and needs no __main__ guard in users' scripts;
        # the workers run only the game and numpy, never torch's thread pools.
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        for w in range(workers):
            parent, child = ctx.Pipe()
            n = len(range(w, num_envs, workers))
            # the worker closes every parent end it inherits: its own and earlier workers'
            ends = (parent, *self.conns) if ctx.get_start_method() == "fork" else ()
            proc = ctx.Process(
                target=_serve, args=(child, make, play, n, max_steps, ends), daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, cmd: str, items: dict[int, object]) -> dict[int, object]:
        """Send ``cmd`` for each env id in ``items``, grouped by worker; gather the answers."""
        return self.receive(self.send(cmd, items))

    def send(self, cmd: str, items: dict[int, object]):
        """Start ``cmd`` on the workers (they run while the caller goes on); ``receive`` it."""
        if not self.conns:
            return {i: self.play(self.local[i], cmd, x) for i, x in items.items()}
        by_worker: dict[int, list[int]] = {}
        for i in items:
            by_worker.setdefault(i % self.workers, []).append(i)
        for w, ids in by_worker.items():
            try:
                self.conns[w].send((cmd, [(i // self.workers, items[i]) for i in ids]))
            except (BrokenPipeError, ConnectionResetError):
                self._worker_died(w)
        return by_worker

    def receive(self, sent) -> dict[int, object]:
        """The answers to a ``send``, by env id."""
        if not self.conns:
            return sent  # played in this process already
        out = {}
        for w, ids in sent.items():
            out.update(zip(ids, self._receive(w), strict=True))
        return out

    def _receive(self, w: int):
        try:
            status, payload = self.conns[w].recv()
        except (EOFError, ConnectionResetError):
            self._worker_died(w)
        if status == "error":
            raise RuntimeError(f"{self.name} worker {w} failed:\n{payload}")
        return payload

    def _worker_died(self, w: int):
        self.procs[w].join(timeout=1)
        code = self.procs[w].exitcode
        raise RuntimeError(f"{self.name} worker {w} died (exit code {code})") from None

    def close(self) -> None:
        for e in self.local:
            e.close()
        for conn in self.conns:  # all close at once
            with contextlib.suppress(OSError):
                conn.send(("close", None))
        for conn, proc in zip(self.conns, self.procs, strict=True):
            _end(conn, proc)
        self.conns, self.procs, self.local = [], [], []


def _end(conn, proc, wait_s: float = 5.0) -> None:
    """Wait for a worker told to close, reading what it still sends (an unread answer larger
    than the pipe's buffer would block it). One that neither ends nor answers within
    ``wait_s`` gets SIGTERM (it closes its games, as on Ctrl-C), then SIGKILL together with
    the processes it started: a ViZDoom engine outlives a killed worker, holding the
    command's output pipes open."""
    with contextlib.suppress(OSError, EOFError):
        while conn.poll(wait_s):  # until end-of-file: the worker has exited
            conn.recv()
    conn.close()
    proc.join(timeout=wait_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=wait_s)
    if proc.is_alive():
        started = _descendants(proc.pid)
        proc.kill()
        proc.join()
        for pid in started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc; none found elsewhere)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found
