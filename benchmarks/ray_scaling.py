"""Generation wall time on Ray (1 and 2 workers) against the one-process rollout engine.

    python benchmarks/ray_scaling.py [--popsize 16] [--rollouts 2] [--steps 300] [--num-envs 16]

One CMA-ES generation's rollouts (popsize x rollouts episodes of ``--steps`` steps, V + M + C
inference, untrained networks) are timed three ways on this machine, in one run: the local
engine; Ray with one worker holding every CPU; Ray with one worker per CPU. Ray's overhead per
generation (scheduling, shipping the population, gathering fitnesses: the wall time minus the
worker's own time) is set against a generation of the paper's shape (64 x 16 episodes of 1,000
steps = 1,024,000 env steps) at this machine's measured steps/s per core, to estimate its share
on N nodes (assuming the overhead does not grow with the node count: one chunk per worker).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAPER_STEPS_PER_GENERATION = 64 * 16 * 1000


def save_models(folder: Path) -> tuple[Path, Path]:
    from worldmodels.config import MDNRNNConfig, VAEConfig
    from worldmodels.memory.mdrnn import MDNRNN
    from worldmodels.memory.train import save_mdrnn
    from worldmodels.vision.train import save_vae
    from worldmodels.vision.vae import ConvVAE

    torch.manual_seed(0)
    save_vae(ConvVAE(), VAEConfig(), folder / "vae.pt")
    save_mdrnn(folder / "mdrnn.pt", MDNRNN(), MDNRNNConfig())
    return folder / "vae.pt", folder / "mdrnn.pt"


def jobs_for(popsize: int, rollouts: int) -> list[tuple[int, int]]:
    return [(c, 1000 + r) for c in range(popsize) for r in range(rollouts)]


def time_local(models, params, jobs, steps, num_envs, backend) -> float:
    from worldmodels.controller.model import ControllerSpec
    from worldmodels.controller.policy import WorldModelPolicy
    from worldmodels.controller.rollout import RolloutEngine
    from worldmodels.envs import make_vec_env
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.utils.device import pick_device
    from worldmodels.vision.train import load_vae

    device = pick_device("auto")
    policy = WorldModelPolicy(
        load_vae(models[0], device), load_mdrnn(models[1], device), ControllerSpec(), device
    )
    with make_vec_env(backend=backend, num_envs=num_envs, max_steps=steps, quiet=True) as env:
        engine = RolloutEngine(policy, env)
        engine.run(params, jobs[:1])  # warm-up
        start = time.perf_counter()
        engine.run(params, jobs)
        return time.perf_counter() - start


def time_ray(ray, models, params, jobs, steps, num_envs, backend, workers, repeats):
    """Median generation wall time, and median Ray overhead (wall minus the busiest worker)."""
    from worldmodels.controller.model import ControllerSpec
    from worldmodels.distributed.cluster import RaySettings
    from worldmodels.distributed.rollouts import RayRolloutPool

    cpus = int(ray.cluster_resources()["CPU"])
    settings = RaySettings(address="local", cpus_per_worker=cpus // workers, workers=workers)
    pool = RayRolloutPool.start(
        settings,
        *models,
        ControllerSpec().to_dict(),
        "sample",
        backend=backend,
        num_envs=num_envs,
        max_steps=steps,
        seed=0,
    )
    try:
        pool.run(params, jobs[: len(pool.workers)])  # warm-up: every worker once
        walls, overheads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            pool.run(params, jobs)
            walls.append(time.perf_counter() - start)
            overheads.append(walls[-1] - pool.busy_seconds)
        return float(np.median(walls)), float(np.median(overheads))
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--popsize", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per setup")
    args = parser.parse_args()

    import ray

    from worldmodels.envs import resolve_backend

    backend = resolve_backend(args.backend, quiet=True)
    cpus = len(os.sched_getaffinity(0))
    params = np.random.default_rng(0).standard_normal((args.popsize, 867)) * 0.1
    jobs = jobs_for(args.popsize, args.rollouts)
    env_steps = len(jobs) * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        models = save_models(Path(tmp))
        local = float(
            np.median(
                [
                    time_local(models, params, jobs, args.steps, args.num_envs, backend)
                    for _ in range(args.repeats)
                ]
            )
        )
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            shape = (models, params, jobs, args.steps, args.num_envs, backend)
            one, overhead = time_ray(ray, *shape, 1, args.repeats)
            many, _ = time_ray(ray, *shape, cpus, args.repeats)
        finally:
            ray.shutdown()

    print(
        f"workload: {args.popsize} candidates x {args.rollouts} rollouts x {args.steps} steps "
        f"= {env_steps} env steps, {backend}, {args.num_envs} envs, {cpus} CPUs"
    )
    rows = [
        ("local engine (1 process)", local),
        ("ray, 1 worker", one),
        (f"ray, {cpus} workers", many),
    ]
    for name, seconds in rows:
        print(
            f"  {name:26s} {seconds:7.2f} s/generation  {env_steps / seconds:7.0f} env steps/s  "
            f"{local / seconds:5.2f}x local"
        )
    print(
        f"ray's overhead per generation (1 worker; wall time minus the worker's own): "
        f"{overhead * 1000:.0f} ms = {100 * overhead / one:.1f}% of this generation"
    )
    per_core = env_steps / local / cpus
    for nodes, cores in [(1, cpus), (1, 64), (8, 64), (32, 64)]:
        gen = PAPER_STEPS_PER_GENERATION / (per_core * cores * nodes)
        print(
            f"  paper-shaped generation on {nodes} node(s) x {cores} cores: ~{gen:7.1f} s, "
            f"ray's overhead {100 * overhead / gen:.2f}% of it"
        )


if __name__ == "__main__":
    main()
