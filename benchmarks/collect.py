"""Collection frames/s on this machine, gymnasium against EnvPool, in one run.

    python benchmarks/collect.py [--episodes 16] [--max-steps 250] [--num-envs 8]

Each backend collects the same number of brownian episodes into a fresh store (preprocessing,
policy and atomic writes included: the whole `worldmodels collect` path). Two settings: one
core for stepping the environments (gymnasium in-process, EnvPool with one thread), and all
cores (gymnasium with one subprocess per core, EnvPool's own thread count).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from worldmodels.config import CollectConfig
from worldmodels.data.collect import collect
from worldmodels.envs.carracing import envpool_available


def measure(backend: str, workers: int | None, args) -> float:
    config = CollectConfig(
        backend=backend,
        episodes=args.episodes,
        max_steps=args.max_steps,
        num_envs=args.num_envs,
        workers=workers,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = collect(config, os.path.join(tmp, "store"), progress=False)
    return summary.frames_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=250)
    parser.add_argument("--num-envs", type=int, default=8)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(
        f"collect benchmark: {args.episodes} episodes x {args.max_steps} steps, "
        f"{args.num_envs} envs per batch, {cores} cores"
    )
    rows = []
    for label, gym_workers, pool_threads in (("1 core", 0, 1), (f"{cores} cores", None, None)):
        gym = measure("gymnasium", gym_workers, args)
        pool = measure("envpool", pool_threads, args) if envpool_available() else float("nan")
        rows.append((label, gym, pool))
    print(f"{'setting':<10} {'gymnasium f/s':>14} {'envpool f/s':>12} {'ratio':>7}")
    for label, gym, pool in rows:
        print(f"{label:<10} {gym:>14.0f} {pool:>12.0f} {pool / gym:>6.1f}x")
    if not envpool_available():
        print("envpool is not installed: `pip install -e .[envpool]` (Linux x86-64)")


if __name__ == "__main__":
    main()
