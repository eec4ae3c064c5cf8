from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from worldmodels.agent import Agent
from worldmodels.cli import main
from worldmodels.config import CollectConfig
from worldmodels.controller.evaluate import evaluate_agent
from worldmodels.data.policies import ENV_POLICIES, POLICIES, make_policy
from worldmodels.data.store import EpisodeStore, load_manifest
from worldmodels.envs import resolve_backend
from worldmodels.envs.carracing import ACTION_HIGH, ACTION_LOW
from worldmodels.execution import collect

FAST_BACKEND = resolve_backend("auto", quiet=True)
RANDOM_POLICIES = [name for name in POLICIES if name != "agent"]  # "agent" needs a trained run


def run_policy(name: str, seed: int, steps: int = 50, slots: int = 3):
    policy = make_policy(name, slots)
    rng = np.random.default_rng(123)
    for s in range(slots):
        policy.start(s, np.random.default_rng([seed, s]))
    frames = rng.integers(0, 256, (steps, slots, 64, 64, 3), dtype=np.uint8)
    active = np.ones(slots, bool)
    return np.stack([policy.act(frames[t], active) for t in range(steps)])


@pytest.mark.parametrize("name", [p for p in ENV_POLICIES["carracing"] if p in RANDOM_POLICIES])
def test_actions_stay_in_the_action_box_and_are_reproducible(name):
    a = run_policy(name, seed=1)
    assert a.shape == (50, 3, 3) and a.dtype == np.float32
    assert (a >= ACTION_LOW).all() and (a <= ACTION_HIGH).all()
    np.testing.assert_array_equal(a, run_policy(name, seed=1))
    assert not np.array_equal(a, run_policy(name, seed=2))


@pytest.mark.parametrize("name", RANDOM_POLICIES)
def test_inactive_slots_get_zero_actions(name):
    policy = make_policy(name, 2)
    policy.start(0, np.random.default_rng(0))
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    out = policy.act(frames, np.array([True, False]))
    assert (out[1] == 0).all()


def test_brownian_is_a_smooth_walk():
    a = run_policy("brownian", seed=0, steps=200)
    steps = np.abs(np.diff(a, axis=0))
    assert steps.max() < 0.8  # continuous: no jumps across the box
    assert a[:, :, 0].std() > 0.05  # but it does wander


def test_random_weights_is_the_papers_near_constant_driver():
    a = run_policy("random_weights", seed=0, steps=30)
    # weights ~ N(0, s^2), s <= 0.01: steering near 0, gas near 0.5, as in the 2018 data
    assert np.abs(a[..., 0]).max() < 0.5
    assert np.abs(a[..., 1] - 0.5).max() < 0.25


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy 'zigzag'"):
        make_policy("zigzag", 1)


# --- policy "agent": a trained run drives, with smooth noise (the paper's iterative procedure)


def deterministic_copy(run: Path, dest: Path) -> Path:
    """A copy of a run whose C sees mu (no sampled z), so its episodes depend only on the seed."""
    shutil.copytree(run, dest)
    info_path = dest / "controller" / "controller.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "z_mode": "mean"}))
    return dest


def collect_agent(
    run: Path, out: Path, noise: float, episodes: int = 2, env: str = "carracing"
) -> EpisodeStore:
    backend = resolve_backend("auto", quiet=True, env=env)
    config = CollectConfig.for_env(
        env,
        backend=backend,
        episodes=episodes,
        max_steps=50,
        num_envs=2,
        seed=5,
        policy="agent",
        agent=str(run),
        agent_noise=noise,
        min_length=0,
    )
    collect(config, str(out), progress=False)
    return EpisodeStore(out)


def assert_plays_as_evaluate_scores(run: Path, store: EpisodeStore, env: str) -> None:
    scored = evaluate_agent(
        Agent.load(run, device="cpu"),
        episodes=2,
        seed=5,
        num_envs=2,
        backend=resolve_backend("auto", quiet=True, env=env),
        max_steps=50,
        progress=False,
    )
    np.testing.assert_allclose([ep.meta["return"] for ep in store], scored.returns, atol=1e-3)
    assert [ep.meta["seed"] for ep in store] == scored.seeds


def test_agent_without_noise_plays_exactly_as_evaluate_scores_it(smoke_run, tmp_path):
    run = deterministic_copy(smoke_run, tmp_path / "run")
    store = collect_agent(run, tmp_path / "store", noise=0.0)
    assert_plays_as_evaluate_scores(run, store, "carracing")


def test_a_dream_trained_doom_agent_collects_doom_and_only_doom(doom_run, tmp_path, capsys):
    pytest.importorskip("vizdoom")
    run = deterministic_copy(doom_run, tmp_path / "run")
    store = collect_agent(run, tmp_path / "store", noise=0.0, env="doom")
    assert store[0]["actions"].shape == (50, 1)
    assert_plays_as_evaluate_scores(run, store, "doom")
    noisy = collect_agent(run, tmp_path / "noisy", noise=1.0, env="doom")
    assert (np.abs(noisy[0]["actions"]) <= 1).all()
    assert np.abs(noisy[0]["actions"] - store[0]["actions"]).mean() > 0.05
    out = tmp_path / "wrong-game"
    args = ["collect", "--out", str(out), "--policy", "agent", "--agent", str(doom_run)]
    assert main([*args, "--backend", FAST_BACKEND]) == 2
    err = capsys.readouterr().err.strip()
    assert "its agent plays 'doom', not 'carracing'" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_agent_noise_moves_the_actions_reproducibly_inside_the_box(smoke_run, tmp_path):
    run = deterministic_copy(smoke_run, tmp_path / "run")
    clean = collect_agent(run, tmp_path / "clean", noise=0.0)
    noisy = collect_agent(run, tmp_path / "noisy", noise=1.0)
    again = collect_agent(run, tmp_path / "again", noise=1.0)
    for c, n, a in zip(clean, noisy, again, strict=True):
        np.testing.assert_array_equal(n["actions"], a["actions"])
        assert (n["actions"] >= ACTION_LOW).all() and (n["actions"] <= ACTION_HIGH).all()
        assert np.abs(n["actions"] - c["actions"]).mean() > 0.05
    identity = load_manifest(tmp_path / "noisy")["identity"]
    assert identity["agent"] == str(run.resolve()) and identity["agent_noise"] == 1.0


def test_cli_agent_policy_needs_a_trained_run(tmp_path, smoke_run, capsys):
    base = ["collect", "--out", str(tmp_path / "s"), "--backend", FAST_BACKEND, "--policy", "agent"]
    assert main(base) == 2
    assert "needs agent=RUN_DIR" in capsys.readouterr().err
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main([*base, "--agent", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not-a-run: no trained controller found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()
    # a store collected by one agent refuses another noise scale
    args = [*base, "--agent", str(smoke_run), "--episodes", "1", "--max-steps", "10"]
    assert main([*args, "--agent-noise", "0.2", "--no-progress"]) == 0
    assert main([*args, "--agent-noise", "0.3", "--no-progress"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_a_store_refuses_to_resume_with_an_agent_trained_again_in_the_same_folder(
    smoke_run, tmp_path, capsys
):
    run = Path(shutil.copytree(smoke_run, tmp_path / "run"))
    out = tmp_path / "store"
    args = ["collect", "--out", str(out), "--backend", FAST_BACKEND, "--policy", "agent"]
    args += ["--agent", str(run), "--max-steps", "10", "--no-progress"]
    assert main([*args, "--episodes", "1"]) == 0
    best = run / "controller" / "best.npy"
    np.save(best, np.load(best) + 0.1)  # C trained again: same folder, another agent
    assert main([*args, "--episodes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "agent_digest" in err and len(err.splitlines()) == 1
    assert len(EpisodeStore(out)) == 1
