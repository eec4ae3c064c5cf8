"""A stopped command leaves nothing behind: SIGTERM / SIGHUP end it the way Ctrl-C does, and
its worker processes never outlive it, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shutdown import (
    alive,
    children,
    needs_proc,
    start,
    stop_and_check_nothing_is_left,
    wait_for,
)

from worldmodels.data.store import EpisodeStore

pytestmark = needs_proc


def collect_args(out, env="carracing"):
    if env == "doom":
        # enough episodes to still run when the test stops it (3 took ~1 s on a quiet machine)
        size = ["--env", "doom", "--episodes", "60", "--max-steps", "400", "--min-length", "0"]
    else:
        size = ["--backend", "gymnasium", "--episodes", "4", "--max-steps", "400"]
    return ["collect", "--out", str(out), *size, "--num-envs", "2", "--workers", "2"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_terminated_collection_stops_cleanly_and_resumes(tmp_path, signum):
    out = tmp_path / "episodes"
    proc = start(*collect_args(out), "--no-progress")
    code, err = stop_and_check_nothing_is_left(proc, signum, workers=2)
    assert code == 128 + signum, err
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert f"{how}; finished work is kept" in err
    again = start(*collect_args(out), "--no-progress")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(EpisodeStore(out)) == 4


def test_workers_die_with_a_killed_command(tmp_path):
    """SIGKILL cannot be handled: the workers notice their parent is gone and exit."""
    proc = start(*collect_args(tmp_path / "episodes"), "--no-progress")
    code, _ = stop_and_check_nothing_is_left(proc, signal.SIGKILL, workers=2)
    assert code == -signal.SIGKILL


def test_a_terminated_doom_collection_leaves_no_game_behind(tmp_path):
    pytest.importorskip("vizdoom")
    out = tmp_path / "episodes"
    proc = start(*collect_args(out, env="doom"), "--no-progress")
    code, err = stop_and_check_nothing_is_left(proc, signal.SIGTERM, workers=2)
    assert code == 128 + signal.SIGTERM, err
    proc = start(*collect_args(out, env="doom"), "--no-progress")
    code, _ = stop_and_check_nothing_is_left(proc, signal.SIGKILL, workers=2)
    assert code == -signal.SIGKILL


class _Hung:
    """An environment whose close never returns; ``deaf``: SIGTERM cannot end it either."""

    def __init__(self, deaf: bool):
        self.deaf = deaf

    def close(self):
        if self.deaf:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(600)


@pytest.mark.parametrize("deaf", [False, True], ids=["hung", "hung-and-deaf"])
def test_a_worker_that_will_not_close_goes_with_its_game_engine(deaf):
    """A worker whose environments hang on close is ended (SIGTERM, then SIGKILL), and the
    ViZDoom engine process it started goes too: left running, it kept the command's output
    pipes open after the command had exited."""
    pytest.importorskip("vizdoom")
    from worldmodels.envs.doom import _Game, _play
    from worldmodels.envs.workers import EnvWorkers

    made = []

    def make(max_steps):  # in the worker: a real game, then the hung environment
        made.append(None)
        return _Game(max_steps) if len(made) == 1 else _Hung(deaf)

    pool = EnvWorkers("ViZDoom", make, _play, num_envs=2, max_steps=50, workers=1)
    pool.run("reset", {0: 7})  # the game's engine is started by its first reset
    (worker,) = pool.procs
    engines = children(worker.pid)
    assert engines, "the game's engine process"
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 30
    assert not alive(worker.pid)
    wait_for(lambda: not any(alive(p) for p in engines), 10, "the engine to exit")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_ray_collection_leaves_no_ray_process(tmp_path, signum):
    """The local Ray instance a command starts (GCS, raylet, workers, agents) goes with it,
    and the same command run again finishes the work on a fresh instance."""
    pytest.importorskip("ray")
    out = tmp_path / "episodes"
    args = [*collect_args(out), "--ray", "local", "--ray-workers", "2"]
    proc = start(*args, "--no-progress")
    # GCS server, raylet and at least the two collection workers' processes
    code, err = stop_and_check_nothing_is_left(proc, signum, workers=4, grace=30)
    assert code == 128 + signum, err
    again = start(*args, "--no-progress")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(EpisodeStore(out)) == 4


def ray_agents(pids) -> list[int]:
    def name(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return ""

    return [p for p in pids if name(p).startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]


def test_a_killed_ray_command_leaves_no_ray_process(tmp_path):
    """After a SIGKILL no code of the command runs: Ray's agents, which outlived it by a
    minute or more, are ended by the reaper the command started with its Ray instance."""
    pytest.importorskip("ray")
    args = [*collect_args(tmp_path / "episodes"), "--ray", "local", "--ray-workers", "2"]
    proc = start(*args, "--no-progress")
    try:
        wait_for(lambda: len(ray_agents(children(proc.pid))) == 2, 120, "Ray's two agents")
        time.sleep(1.0)  # the watcher notes the process tree twice a second
        started = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not any(alive(p) for p in started), 15, "every Ray process to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_python_swallows_still_ends_with_the_stopped_status(monkeypatch, capsys):
    """A SIGTERM that lands in a finaliser (or a fork hook, as it did once inside logging's
    after-fork lock release) raises there, and Python prints "Exception ignored" and goes on.
    The command then runs to its end; its work is kept, but it must still exit as stopped."""
    import gc

    import worldmodels.cli.info as info
    from worldmodels.cli import main

    class SignalsWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    def run(args):
        SignalsWhenCollected()  # collected at once: the handler's exception is swallowed
        gc.collect()
        return 0

    monkeypatch.setattr(info, "run", run)
    assert main(["info", "unused"]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_the_reaper_finds_processes_by_the_commands_mark():
    """A process Ray starts in the reaper's last half second is orphaned before any poll sees
    it below the command; it still carries the command's mark, and only it is found."""
    pytest.importorskip("psutil")
    from worldmodels.distributed.reaper import OWNER_VARIABLE, marked

    owner = os.getpid()
    since = time.time() - 1
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    mark = {**os.environ, OWNER_VARIABLE: str(owner)}
    other = {**os.environ, OWNER_VARIABLE: str(owner + 1)}
    procs = [subprocess.Popen(sleep, env=env) for env in (mark, other)]
    try:
        wait_for(lambda: procs[0].pid in marked(owner, since), 10, "the marked process")
        assert procs[1].pid not in marked(owner, since)
        assert procs[0].pid not in marked(owner, time.time() + 60)  # started before `since`
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_stopped_training_flushes_its_log_leaves_no_temp_file_and_resumes(small_store, tmp_path):
    """What a command holds besides processes: after SIGTERM its TensorBoard curve up to the
    stop is on disk, no half-written file is left, and the resumed run's curve, as
    TensorBoard reads it, goes on from the checkpoint to the end with each step once."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged_steps() -> list[int]:
        return [e.step for e in EventAccumulator(str(out / "tb")).Reload().Scalars("train/total")]

    out = tmp_path / "vae"
    args = ["train-vae", "--store", str(small_store), "--out", str(out), "--batch-size", "16"]
    args += ["--z-size", "8", "--checkpoint-every", "100", "--no-progress"]  # logs every 50
    proc = start(*args, "--steps", "100000")
    try:
        wait_for(lambda: (out / "latest.pt").exists(), 300, "the first checkpoint (step 100)")
        time.sleep(2.0)  # on into the next hundred steps
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM; finished work is kept" in err
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert {50, 100} <= set(logged_steps())

    saved = torch.load(out / "latest.pt", weights_only=False)["position"]["step"]
    end = saved + 100
    again = start(*args, "--resume", "--steps", str(end))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    steps = logged_steps()
    assert steps == sorted(set(steps)) and steps[-1] == end, steps
    assert set(range(50, end, 50)) <= set(steps)
