"""A kill at any moment, in any stage, loses nothing: the smoke pipeline is killed with SIGKILL
(its whole process group, as an out-of-memory kill or a lost machine would) at random moments
spread over its run, restarted each time, and must end complete, loadable, and where a stage
is deterministic, identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import STAGES
from worldmodels.data.store import EpisodeStore
from worldmodels.evolution.cmaes import STATE, safe_loads


def pipeline(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worldmodels", "pipeline", "--preset", "smoke", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_to_end(out: Path) -> float:
    start = time.monotonic()
    proc = pipeline(out)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    return time.monotonic() - start


def stage_reached(out: Path) -> str:
    try:
        done = json.loads((out / "stages.json").read_text())
    except (OSError, ValueError):
        return "collect"
    return next((s for s in STAGES if s not in done), "finished")


def all_arrays(store_path: Path) -> list[dict[str, np.ndarray]]:
    store = EpisodeStore(store_path, verify=True)  # every checksum checked on read
    return [{k: np.asarray(store[i][k]) for k in store[i].keys} for i in range(len(store))]


def kill_during(out: Path, stage: str, rng: random.Random) -> tuple[float, str] | None:
    """Start the pipeline, wait until ``stage`` is the one running (by stages.json), then
    SIGKILL its process group after a random 0.2-2.5 s; None if it finished first."""
    proc = pipeline(out)
    try:
        while stage_reached(out) != stage and proc.poll() is None:
            if STAGES.index(stage_reached(out)) > STAGES.index(stage):
                break  # already past it (a stage shorter than one poll)
            time.sleep(0.02)
        delay = rng.uniform(0.2, 2.5)
        try:
            proc.wait(timeout=delay)
            return None
        except subprocess.TimeoutExpired:
            where = stage_reached(out)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return round(delay, 2), where
    finally:
        proc.stderr.close()


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_to_end(clean)
    rng = random.Random(20261203)
    moments = []
    # follow the run's own progress (not wall time: machines differ): a kill in each stage
    for stage in STAGES[:-1]:
        if stage_reached(killed) == "finished":
            break
        moment = kill_during(killed, stage, rng)
        if moment is not None:
            moments.append(moment)
    run_to_end(killed)
    stages_killed = {stage for _, stage in moments}
    assert len(moments) >= 4 and len(stages_killed) >= 3, f"kills (s, stage): {moments}"

    # complete: every stage recorded, every output loads
    assert set(json.loads((killed / "stages.json").read_text())) == set(STAGES), moments
    from worldmodels.agent import Agent
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.vision.train import load_vae

    episodes = all_arrays(killed / "episodes")
    series = all_arrays(killed / "series")
    assert len(episodes) == len(series) == len(EpisodeStore(clean / "episodes"))
    load_mdrnn(killed / "mdrnn" / "mdrnn.pt")
    assert safe_loads((killed / "controller" / STATE).read_bytes()).generation >= 1
    Agent.load(killed, device="cpu")
    assert json.loads((killed / "eval.json").read_text())["episodes"] == 2
    assert (killed / "report.md").read_text().startswith("#")

    # identical where the stage is deterministic: the episodes and V's weights
    for ours, theirs in zip(episodes, all_arrays(clean / "episodes"), strict=True):
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{name} {moments}")
    v_killed = load_vae(killed / "vae" / "vae.pt").state_dict()
    v_clean = load_vae(clean / "vae" / "vae.pt").state_dict()
    for name, weight in v_clean.items():
        assert torch.equal(v_killed[name], weight), f"V weight {name} differs; kills {moments}"
