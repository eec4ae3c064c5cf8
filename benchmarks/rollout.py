"""Env steps/s with full V + M + C inference: the batched engine against the naive loop.

    python benchmarks/rollout.py [--steps 300] [--num-envs 32]

The naive loop is how the 2018 code and its ports run a controller: one gymnasium env per
process, each frame through V, M and C on its own (batch 1). It runs in one process per core,
all at once, so both sides use the same cores. The engine runs every env of the batch
(EnvPool when installed, else gymnasium workers) through one network call per step, keeping
slots busy across episode ends. Networks are untrained (speed does not depend on weights).
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
    from worldmodels.envs.carracing import make_vec_env

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


def engine(steps: int, num_envs: int, backend: str) -> float:
    from worldmodels.controller.rollout import RolloutEngine
    from worldmodels.envs.carracing import make_vec_env

    policy = build_policy()
    rng = np.random.default_rng(0)
    params = rng.standard_normal((8, policy.spec.num_params)) * 0.1
    with make_vec_env(backend=backend, num_envs=num_envs, max_steps=steps) as env:
        runner = RolloutEngine(policy, env)
        runner.run(params, [(0, 0)])  # warm-up
        jobs = [(j % 8, j) for j in range(num_envs * 2)]
        result = runner.run(params, jobs)
    return result.steps_per_second


def main() -> None:
    from worldmodels.envs.carracing import resolve_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per episode")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    backend = resolve_backend(args.backend)
    naive_rate = naive(args.steps, cores)
    engine_rate = engine(args.steps, args.num_envs, backend)
    print(f"rollout benchmark: V + M + C inference, {cores} cores, episodes of {args.steps} steps")
    print(f"{'loop':<44} {'env steps/s':>12}")
    print(f"{f'naive: {cores} processes x 1 gymnasium env, batch 1':<44} {naive_rate:>12.0f}")
    print(f"{f'engine: {args.num_envs} {backend} envs, batched':<44} {engine_rate:>12.0f}")
    print(f"speed-up: {engine_rate / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
