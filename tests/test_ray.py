"""Ray: collection and CMA-ES rollouts on a real local Ray instance, killed workers included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodels.config import CollectConfig, ControllerConfig
from worldmodels.controller.model import ControllerSpec
from worldmodels.controller.policy import WorldModelPolicy
from worldmodels.controller.rollout import RolloutEngine
from worldmodels.controller.train import train_controller
from worldmodels.data.store import EpisodeStore
from worldmodels.distributed.cluster import (
    RaySettings,
    balanced_chunks,
    check_same_code,
    code_fingerprint,
    settings_from_flag,
)
from worldmodels.envs import make_vec_env
from worldmodels.execution import collect
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.memory.train import load_mdrnn, save_mdrnn
from worldmodels.vision.train import load_vae, save_vae
from worldmodels.vision.vae import ConvVAE

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')

LOCAL = RaySettings(address="local", cpus_per_worker=1)


@pytest.fixture(scope="module")
def ray_instance():
    # "local": a fresh instance, never one that another command left running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from worldmodels.config import MDNRNNConfig, VAEConfig

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_vae(ConvVAE(), VAEConfig(), folder / "vae.pt")
    save_mdrnn(folder / "mdrnn.pt", MDNRNN(), MDNRNNConfig())
    return folder / "vae.pt", folder / "mdrnn.pt"


def test_balanced_chunks_cover_every_job_once():
    for n, parts in [(10, 3), (3, 5), (64, 8), (1, 1)]:
        chunks = balanced_chunks(n, parts)
        assert sorted(i for c in chunks for i in c) == list(range(n))
        sizes = [len(c) for c in chunks]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_flag_and_address_rules(monkeypatch):
    assert settings_from_flag(None) is None
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert settings_from_flag("").address == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert settings_from_flag("").address == "10.0.0.1:6379"
    assert settings_from_flag("auto").address == "auto"
    with pytest.raises(ValueError, match="cpus_per_worker"):
        settings_from_flag("", cpus_per_worker=0)


def test_other_code_on_a_node_is_reported():
    mine = code_fingerprint()
    check_same_code([("node-a", mine), ("node-b", mine)])
    with pytest.raises(ValueError, match="node-b runs worldmodels 0.0.9"):
        check_same_code([("node-a", mine), ("node-b", "0.0.9+abc")])


def test_nothing_imports_ray_without_the_flag():
    code = (
        "import sys, worldmodels.cli, worldmodels.pipeline, worldmodels.execution, "
        "worldmodels.controller.train, worldmodels.controller.evaluate, worldmodels.dream.train; "
        "worldmodels.cli.build_parser(); assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_local_stages_know_nothing_of_the_cluster():
    """Local or Ray is chosen in worldmodels.execution alone (the CLI only builds the settings):
    no stage module names the distributed package, not even in a function (data/collect.py and
    distributed/collect.py used to import each other)."""
    import worldmodels

    root = Path(worldmodels.__file__).parent
    allowed = {"execution.py", "cli/__init__.py"}
    naming = sorted(
        str(f.relative_to(root))
        for f in root.rglob("*.py")
        if f.parent.name != "distributed"
        and str(f.relative_to(root)) not in allowed
        and "worldmodels.distributed" in f.read_text()
    )
    assert not naming, f"modules choosing local or Ray themselves: {naming}"


def test_unreachable_address_fails_fast_and_clearly(tmp_path):
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "worldmodels",
            "collect",
            "--out",
            str(tmp_path / "eps"),
            "--episodes",
            "1",
            "--ray",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in out.stderr
    assert time.perf_counter() - start < 30


def test_collection_on_ray_writes_the_same_store(ray_instance, tmp_path):
    config = CollectConfig(backend="gymnasium", episodes=4, max_steps=30, num_envs=2, seed=3)
    collect(config, str(tmp_path / "local"), progress=False)
    collect(config, str(tmp_path / "ray"), progress=False, cluster=LOCAL)
    local, distributed = EpisodeStore(tmp_path / "local"), EpisodeStore(tmp_path / "ray")
    assert local.indices == distributed.indices == [0, 1, 2, 3]
    for a, b in zip(local, distributed, strict=True):
        assert a.meta == b.meta
        for name in ("obs", "actions", "rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(a[name], b[name])
    # resuming on Ray adds only the missing episodes
    more = CollectConfig(**{**config.__dict__, "episodes": 6})
    summary = collect(more, str(tmp_path / "ray"), progress=False, cluster=LOCAL)
    assert summary.episodes_new == 2 and EpisodeStore(tmp_path / "ray").indices == list(range(6))


def local_returns(models, params, jobs):
    vae, mdrnn = load_vae(models[0]), load_mdrnn(models[1])
    policy = WorldModelPolicy(vae, mdrnn, ControllerSpec())
    with make_vec_env(backend="gymnasium", num_envs=2, max_steps=40, workers=0) as env:
        return RolloutEngine(policy, env).run(params, jobs).returns


def start_pool(models, settings=LOCAL):
    from worldmodels.distributed.rollouts import RayRolloutPool

    return RayRolloutPool.start(
        settings,
        models[0],
        models[1],
        ControllerSpec().to_dict(),
        "sample",
        backend="gymnasium",
        num_envs=2,
        max_steps=40,
        seed=0,
    )


def test_a_generation_on_ray_matches_the_local_engine(ray_instance, models):
    params = np.random.default_rng(0).standard_normal((3, 867)) * 0.5
    jobs = [(c, s) for c in range(3) for s in (21, 22)]
    pool = start_pool(models)
    try:
        assert len(pool.workers) == 2  # one per CPU Ray reports
        result = pool.run(params, jobs)
    finally:
        pool.close()
    np.testing.assert_allclose(result.returns, local_returns(models, params, jobs), atol=1e-3)
    assert result.env_steps == 6 * 40


def test_a_killed_worker_has_its_work_rerun(ray_instance, models):
    params = np.random.default_rng(1).standard_normal((4, 867)) * 0.5
    jobs = [(c, s) for c in range(4) for s in (31, 32, 33)]
    pool = start_pool(models)
    victim = pool.pids[0]
    killer = threading.Timer(2.0, os.kill, (victim, signal.SIGKILL))
    try:
        killer.start()
        result = pool.run(params, jobs)
        # the restarted worker serves the next generation too
        again = pool.run(params[:1], jobs[:2])
    finally:
        killer.cancel()
        pool.close()
    assert pool.reruns >= 1, "the worker was not killed mid-generation; make the jobs longer"
    expected = local_returns(models, params, jobs)
    np.testing.assert_allclose(result.returns, expected, atol=1e-3)
    np.testing.assert_allclose(again.returns, expected[:2], atol=1e-3)


def test_train_controller_on_ray_and_resume(ray_instance, models, tmp_path):
    config = ControllerConfig(
        popsize=4,
        rollouts=1,
        generations=2,
        backend="gymnasium",
        num_envs=2,
        max_steps=30,
        eval_every=1,
        eval_episodes=2,
    )
    summary = train_controller(*models, tmp_path, config, progress=False, cluster=LOCAL)
    assert summary.generations == 2 and (tmp_path / "best.npy").exists()
    config.generations = 3
    resumed = train_controller(
        *models, tmp_path, config, resume=True, progress=False, cluster=LOCAL
    )
    assert resumed.generations == 3


def test_pipeline_smoke_on_ray_from_the_command_line(ray_instance, tmp_path):
    from worldmodels.cli import main

    out = tmp_path / "run"
    assert main(["pipeline", "--preset", "smoke", "--out", str(out), "--ray", "--no-progress"]) == 0
    assert (out / "report.md").exists() and (out / "controller" / "best.npy").exists()
    assert len(EpisodeStore(out / "episodes")) == 4


def test_evaluation_on_ray_gives_the_local_returns(ray_instance, smoke_run):
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent

    agent = Agent.load(smoke_run)
    kwargs = dict(episodes=4, seed=5, num_envs=2, backend="gymnasium", max_steps=40)
    local = evaluate_agent(agent, progress=False, **kwargs)
    distributed = evaluate_agent(agent, progress=False, cluster=LOCAL, **kwargs)
    assert distributed.seeds == local.seeds == [5, 6, 7, 8]
    np.testing.assert_allclose(distributed.returns, local.returns, atol=1e-3)


def test_a_doom_agent_is_evaluated_on_ray_in_doom(ray_instance, doom_run):
    """Ray workers play the agent's own game with its own preprocessing (they played CarRacing
    whatever the agent was before)."""
    pytest.importorskip("vizdoom")
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent

    agent = Agent.load(doom_run)
    kwargs = dict(episodes=2, seed=3, num_envs=2, max_steps=60)
    local = evaluate_agent(agent, progress=False, **kwargs)
    distributed = evaluate_agent(agent, progress=False, cluster=LOCAL, **kwargs)
    assert distributed.env == "doom"
    np.testing.assert_array_equal(distributed.returns, local.returns)


def test_dreams_on_ray_are_the_local_dreams(ray_instance, doom_run):
    """A generation's dreams split over two workers equal the same batches dreamt here."""
    from worldmodels.config import DreamConfig
    from worldmodels.dream.env import load_initial_latents
    from worldmodels.dream.train import DreamFitness, controller_spec
    from worldmodels.execution import dream_runner

    mdrnn_path = doom_run / "mdrnn" / "mdrnn.pt"
    mdrnn = load_mdrnn(mdrnn_path)
    latents = load_initial_latents(doom_run / "series")
    spec = controller_spec("zch", mdrnn)
    population = np.random.default_rng(0).standard_normal((5, spec.num_params)) * 0.3
    # 5 candidates x 3 dreams = 15 rows: two tasks of 8 and 7 rows, one per worker
    dream = DreamConfig(max_steps=60)
    runner = dream_runner(mdrnn, latents, spec, dream, cluster=LOCAL, mdrnn_path=mdrnn_path)
    try:
        assert runner.parallel == 2
        on_ray = DreamFitness(mdrnn, latents, spec, dream, 3, seed=1, runner=runner)
        returns, lengths, steps = on_ray.dreams(population, generation=4)
    finally:
        runner.close()
    here = DreamConfig(max_steps=60, max_batch=8)
    local = DreamFitness(mdrnn, latents, spec, here, 3, seed=1).dreams(population, generation=4)
    np.testing.assert_array_equal(returns.numpy(), local[0].numpy())
    np.testing.assert_array_equal(lengths.numpy(), local[1].numpy())
    assert steps == local[2] == int(lengths.sum())


def test_train_in_dream_on_ray(ray_instance, doom_run, tmp_path):
    from worldmodels.config import ControllerConfig, DreamConfig
    from worldmodels.dream.train import train_in_dream

    config = ControllerConfig(
        env="doom",
        mode="zch",
        popsize=4,
        rollouts=2,
        generations=2,
        num_envs=2,
        max_steps=60,
        eval_every=0,
    )
    paths = (doom_run / "mdrnn" / "mdrnn.pt", doom_run / "series", doom_run / "vae" / "vae.pt")
    summary = train_in_dream(
        *paths, tmp_path, config, DreamConfig(max_steps=60), progress=False, cluster=LOCAL
    )
    assert summary.generations == 2 and (tmp_path / "best.npy").exists()


def test_dream_sweep_on_ray_from_the_command_line(ray_instance, doom_run, tmp_path):
    """`dream-sweep --ray` trains and scores on the cluster: an address that is not one stops
    it before any work (without the flag wired through it would run here and succeed)."""
    from worldmodels.cli import main

    models = [
        *("--mdrnn", str(doom_run / "mdrnn" / "mdrnn.pt"), "--series", str(doom_run / "series")),
        *("--vae", str(doom_run / "vae" / "vae.pt"), "--temperatures", "1.0"),
        *("--popsize", "4", "--rollouts", "2", "--dream-max-steps", "20", "--generations", "1"),
        *("--eval-every", "0", "--eval-episodes", "2", "--max-steps", "20", "--num-envs", "2"),
        *("--dream-episodes", "4", "--no-progress"),
    ]
    refused = subprocess.run(  # its own process: this one is attached to the test's instance
        [sys.executable, "-m", "worldmodels", "dream-sweep", *models, "--out", str(tmp_path / "a")]
        + ["--ray", "127.0.0.1:1"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2, refused.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in refused.stderr
    assert not (tmp_path / "a" / "tau_1" / "sweep_row.json").exists()
    assert main(["dream-sweep", *models, "--out", str(tmp_path / "b"), "--ray"]) == 0
    row = json.loads((tmp_path / "b" / "tau_1" / "sweep_row.json").read_text())
    assert row["generations"] == 1 and row["real_episodes"] == 2
