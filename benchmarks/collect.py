"""Collection frames/s on this machine, gymnasium against EnvPool, in one run.

    python benchmarks/collect.py [--episodes 16] [--max-steps 250] [--num-envs 16]

Each backend collects the same number of brownian episodes into a fresh store (preprocessing,
policy and atomic writes included: the whole `worldmodels collect` path). Two settings: one
thread stepping the environments (gymnasium in-process, EnvPool with one thread), and all
cores (gymnasium with one subprocess per core, EnvPool's own thread count). "Per core" divides
the frames by the CPU-seconds the collection used (all threads and worker processes).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile

from worldmodels.config import CollectConfig
from worldmodels.envs import envpool_available
from worldmodels.execution import collect


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (gym workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(backend: str, workers: int | None, args) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second) of one collection."""
    config = CollectConfig(
        backend=backend,
        episodes=args.episodes,
        max_steps=args.max_steps,
        num_envs=args.num_envs,
        workers=workers,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        cpu = cpu_seconds()
        summary = collect(config, os.path.join(tmp, "store"), progress=False)
        cpu = cpu_seconds() - cpu
    return summary.frames_per_second, summary.frames_new / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=250)
    parser.add_argument("--num-envs", type=int, default=16)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(
        f"collect benchmark: {args.episodes} episodes x {args.max_steps} steps, "
        f"{args.num_envs} envs per batch, {cores} cores"
    )
    nan = (float("nan"), float("nan"))
    warm_up = argparse.Namespace(episodes=2, max_steps=5, num_envs=2)
    for backend in ("gymnasium", "envpool") if envpool_available() else ("gymnasium",):
        measure(backend, 0, warm_up)  # imports and first-make costs out of the figures
    rows = []
    for label, gym_workers, pool_threads in (("1 env thread", 0, 1), ("all cores", None, None)):
        gym = measure("gymnasium", gym_workers, args)
        pool = measure("envpool", pool_threads, args) if envpool_available() else nan
        rows.append((label, gym, pool))
    print(
        f"{'setting':<13} {'gym f/s':>8} {'envpool f/s':>12} {'ratio':>6} "
        f"{'gym f/core-s':>13} {'envpool f/core-s':>17} {'ratio':>6}"
    )
    for label, (gym, gym_cpu), (pool, pool_cpu) in rows:
        print(
            f"{label:<13} {gym:>8.0f} {pool:>12.0f} {pool / gym:>5.1f}x "
            f"{gym_cpu:>13.0f} {pool_cpu:>17.0f} {pool_cpu / gym_cpu:>5.1f}x"
        )
    if not envpool_available():
        print("envpool is not installed: `pip install -e .[envpool]` (Linux x86-64)")


if __name__ == "__main__":
    main()
