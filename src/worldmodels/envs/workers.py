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

import sys
import traceback
from collections.abc import Callable


def _serve(conn, make: Callable, play: Callable, num_envs: int, max_steps: int) -> None:
    """A worker's loop: owns ``num_envs`` environments, answers commands for any subset."""
    try:
        envs = [make(max_steps) for _ in range(num_envs)]
        while True:
            cmd, data = conn.recv()
            if cmd == "close":
                for e in envs:
                    e.close()
                conn.send(("ok", None))
                return
            conn.send(("ok", [play(envs[i], cmd, x) for i, x in data]))
    except (KeyboardInterrupt, EOFError):
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))


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
        import os

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
            proc = ctx.Process(target=_serve, args=(child, make, play, n, max_steps), daemon=True)
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
        for conn, proc in zip(self.conns, self.procs, strict=True):
            try:
                conn.send(("close", None))
                conn.recv()
            except (OSError, EOFError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self.conns, self.procs, self.local = [], [], []
