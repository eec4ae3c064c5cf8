"""Env steps/s with full V + M + C inference: the batched engine against the naive loop.

    python benchmarks/rollout.py [--steps 300] [--num-envs 32] [--early-stop N]

The naive loop is how the 2018 code and its ports run a controller: one gymnasium env per
process, each frame through V, M and C on its own (batch 1). It runs in one process per core,
all at once, so both sides use the same cores. The engine runs every env of the batch
(EnvPool when installed, else gymnasium workers) through one network call per step, keeping
slots busy across episode ends; synchronously (all envs step, then the networks run), and
overlapped (two groups of envs: one group's envs step while the other's actions are
computed), with each group's EnvPool threads sharing out the cores (the engine before) or
each group given every core; and the last with V's encoder in bfloat16 (``bf16``, where the
CPU has AVX512-BF16 or AMX). Networks are untrained (speed does not depend on weights).
``--early-stop N`` cuts an episode after N steps without a new tile, as training does: the
episodes then end at different steps, every reset is seeded (a new EnvPool pool per reset, as
in training) and the slots that finish early wait for the others' last jobs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np
import torch


def build_policy(bf16: bool = False):
    from worldmodels.controller.model import ControllerSpec
    from worldmodels.controller.policy import WorldModelPolicy
    from worldmodels.memory.mdrnn import MDNRNN
    from worldmodels.vision.vae import ConvVAE

    torch.manual_seed(0)
    return WorldModelPolicy(ConvVAE(), MDNRNN(), ControllerSpec(), bf16=bf16)


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


def engine(
    steps: int,
    num_envs: int,
    backend: str,
    groups: int,
    workers: int | None = None,
    bf16: bool = False,
    early_stop: int | None = None,
) -> float:
    from worldmodels.controller.rollout import RolloutEngine, make_env_groups

    policy = build_policy(bf16)
    rng = np.random.default_rng(0)
    params = rng.standard_normal((8, policy.spec.num_params)) * 0.1
    runner = RolloutEngine(policy, make_env_groups(backend, num_envs, steps, groups, workers))
    try:
        runner.run(params, [(0, 0)])  # warm-up
        jobs = [(j % 8, 10_000 + j) for j in range(num_envs * 2)]
        result = runner.run(params, jobs, early_stop=early_stop)
    finally:
        runner.close()
    return result.steps_per_second


def main() -> None:
    from worldmodels.envs import resolve_backend
    from worldmodels.utils.device import bf16_supported

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per episode (at most)")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--early-stop", type=int, default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    backend = resolve_backend(args.backend)
    half = args.num_envs // 2
    arms = [
        (f"engine, synchronous: {args.num_envs} {backend} envs, batched", 1, None, False),
        (
            f"engine, overlapped: 2 groups of {half}, {max(1, cores // 2)} threads each",
            2,
            None,
            False,
        ),
        (f"engine, overlapped: 2 groups of {half}, {cores} threads each", 2, cores, False),
    ]
    if bf16_supported(torch.device("cpu")):
        arms.append(("  the same, V's encoder in bf16", 2, cores, True))
    rates = [naive(args.steps, cores)]
    for _, groups, workers, bf16 in arms:
        rates.append(
            engine(args.steps, args.num_envs, backend, groups, workers, bf16, args.early_stop)
        )
    cut = f", cut after {args.early_stop} without a new tile" if args.early_stop else ""
    print(
        f"rollout benchmark: V + M + C inference, {cores} cores, "
        f"episodes of {args.steps} steps{cut}"
    )
    print(f"{'loop':<58} {'env steps/s':>12} {'x naive':>8}")
    names = [f"naive: {cores} processes x 1 gymnasium env, batch 1"] + [a[0] for a in arms]
    for name, rate in zip(names, rates, strict=True):
        print(f"{name:<58} {rate:>12.0f} {rate / rates[0]:>7.1f}x")
    if not bf16_supported(torch.device("cpu")):
        print("(no bf16 arm: this CPU has neither AVX512-BF16 nor AMX)")


if __name__ == "__main__":
    main()
