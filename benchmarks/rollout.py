"""Env steps/s with full V + M + C inference: the batched engine against the naive loop.

    python benchmarks/rollout.py [--steps 300] [--num-envs 32]

The naive loop is how the 2018 code and its ports run a controller: one gymnasium env per
process, each frame through V, M and C on its own (batch 1). It runs in one process per core,
all at once, so both sides use the same cores. The engine runs every env of the batch
(EnvPool when installed, else gymnasium workers) through one network call per step, keeping
slots busy across episode ends; synchronously (all envs step, then the networks run), and
overlapped (two groups of envs: one group's envs step while the other's actions are
computed). Networks are untrained (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np
import torch


def build_policy():
    from worldmodels.controller.model import ControllerSpec
    from worldmodels.controller.policy import WorldModelPolicy
    from worldmodels.memory.mdrnn import MDNRNN
    from worldmodels.vision.vae import ConvVAE

    torch.manual_seed(0)
    return WorldModelPolicy(ConvVAE(), MDNRNN(), ControllerSpec())


def naive_worker(steps: int, queue) -> None:
    """One env, one frame at a time through V, M, C (as the 2018 loop)."""
    torch.set_num_threads(1)
    from worldmodels.envs import make_vec_env

    policy = build_policy()
    params = torch.zeros(1, policy.spec.num_params)
    with make_vec_env(backend="gymnasium", num_envs=1, workers=0) as env:
        obs = env.reset(seeds=[os.getpid()])
        policy.reset(1)
        policy.start(np.array([0]), [0])
        start = time.perf_counter()
        for _ in range(steps):
            action, _ = policy.act(obs, np.array([0]), params)
            result = env.step(action)
            obs = result.obs
            if result.terminated[0] or result.truncated[0]:
                obs = env.reset(seeds=[None])
        queue.put(steps / (time.perf_counter() - start))


def naive(steps: int, processes: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=naive_worker, args=(steps, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def engine(steps: int, num_envs: int, backend: str, groups: int) -> float:
    from worldmodels.controller.rollout import RolloutEngine, make_env_groups

    policy = build_policy()
    rng = np.random.default_rng(0)
    params = rng.standard_normal((8, policy.spec.num_params)) * 0.1
    runner = RolloutEngine(policy, make_env_groups(backend, num_envs, steps, groups))
    try:
        runner.run(params, [(0, 0)])  # warm-up
        jobs = [(j % 8, j) for j in range(num_envs * 2)]
        result = runner.run(params, jobs)
    finally:
        runner.close()
    return result.steps_per_second


def main() -> None:
    from worldmodels.envs import resolve_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per episode")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    backend = resolve_backend(args.backend)
    naive_rate = naive(args.steps, cores)
    sync_rate = engine(args.steps, args.num_envs, backend, groups=1)
    overlap_rate = engine(args.steps, args.num_envs, backend, groups=2)
    print(f"rollout benchmark: V + M + C inference, {cores} cores, episodes of {args.steps} steps")
    print(f"{'loop':<52} {'env steps/s':>12}")
    print(f"{f'naive: {cores} processes x 1 gymnasium env, batch 1':<52} {naive_rate:>12.0f}")
    sync = f"engine, synchronous: {args.num_envs} {backend} envs, batched"
    print(f"{sync:<52} {sync_rate:>12.0f}")
    overlap = f"engine, overlapped: 2 groups of {args.num_envs // 2}, batched"
    print(f"{overlap:<52} {overlap_rate:>12.0f}")
    print(
        f"speed-up over naive: synchronous {sync_rate / naive_rate:.1f}x, overlapped "
        f"{overlap_rate / naive_rate:.1f}x ({overlap_rate / sync_rate:.2f}x the synchronous)"
    )


if __name__ == "__main__":
    main()
