"""CMA-ES rollouts across a Ray cluster: the batched rollout engine, once per worker.

Each worker (a Ray actor) owns a :class:`RolloutEngine`: its own environments and its own
copy of V and M, shipped once through the object store when the pool starts. Per generation
only the population (a few hundred KB) travels; the jobs are cut into balanced chunks, one per
worker, and a chunk whose worker dies is run again on another. ``RayRolloutPool.run`` has the
engine's signature, so the CMA-ES loop does not know which one it drives.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worldmodels.controller.rollout import RolloutResult
from worldmodels.distributed.cluster import (
    RaySettings,
    balanced_chunks,
    check_same_code,
    connect,
    get_within,
    gpus_per_worker,
    node_report,
    run_chunks,
    worker_count,
)


class RolloutWorker:
    """Body of one Ray actor: V, M and a batch of environments; plays the jobs it is given."""

    def __init__(
        self,
        vae_bytes: bytes,
        mdrnn_bytes: bytes | None,
        spec: dict,
        z_mode: str,
        bf16: bool,
        env_kwargs: dict,
        threads: int,
    ):
        import torch

        from worldmodels.controller.model import ControllerSpec
        from worldmodels.controller.policy import WorldModelPolicy
        from worldmodels.controller.rollout import RolloutEngine
        from worldmodels.envs import make_vec_env, preprocess_for
        from worldmodels.memory.train import load_mdrnn
        from worldmodels.utils.device import pick_device
        from worldmodels.vision.train import load_vae

        device = pick_device("auto")
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            vae = load_vae(_write(Path(tmp) / "vae.pt", vae_bytes), device)
            mdrnn = None
            if mdrnn_bytes is not None:
                mdrnn = load_mdrnn(_write(Path(tmp) / "mdrnn.pt", mdrnn_bytes), device)
        env = env_kwargs.get("env", "carracing")
        policy = WorldModelPolicy(
            vae,
            mdrnn,
            ControllerSpec(**spec),
            device,
            z_mode=z_mode,
            preprocess=preprocess_for(env),
            bf16=bf16,
        )
        self.engine = RolloutEngine(policy, make_vec_env(quiet=True, **env_kwargs))

    def report(self) -> tuple[str, str, int]:
        return (*node_report(), os.getpid())

    def run(self, params: np.ndarray, jobs: list, early_stop: int | None):
        result = self.engine.run(params, jobs, early_stop=early_stop)
        return result.returns, result.lengths, result.env_steps, result.seconds


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class RayRolloutPool:
    """The rollout engine's interface over Ray workers (see the module docstring)."""

    def __init__(self, ray, workers: list, settings: RaySettings, pids: list[int]):
        self.ray = ray
        self.workers = workers
        self.settings = settings
        self.pids = pids  # of the workers as started (tests kill one)
        self.reruns = 0  # chunks run again because their worker died
        self.busy_seconds = 0.0  # of the last run: the longest any worker spent on its chunks

    @classmethod
    def start(
        cls,
        settings: RaySettings,
        vae_path: str | Path,
        mdrnn_path: str | Path | None,
        spec: dict,
        z_mode: str,
        backend: str,
        num_envs: int,
        max_steps: int,
        seed: int,
        env: str = "carracing",
        bf16: bool = False,
    ) -> RayRolloutPool:
        """Start one worker per ``cpus_per_worker`` CPUs of the cluster, ``num_envs`` in all,
        playing ``env`` (CarRacing or Doom)."""
        from worldmodels.data.collect import pool_seed
        from worldmodels.envs import resolve_backend
        from worldmodels.vision.train import VAE_FILE

        ray = connect(settings)
        n = worker_count(ray, settings)
        backend = resolve_backend(backend, quiet=True, env=env)
        vae_path = Path(vae_path)
        vae_ref = ray.put((vae_path / VAE_FILE if vae_path.is_dir() else vae_path).read_bytes())
        mdrnn_ref = ray.put(Path(mdrnn_path).read_bytes()) if mdrnn_path is not None else None
        actor = ray.remote(RolloutWorker).options(
            num_cpus=settings.cpus_per_worker,
            num_gpus=gpus_per_worker(ray, n),
            max_restarts=-1,
            max_task_retries=0,
        )
        cpus = settings.cpus_per_worker
        workers = [
            actor.remote(
                vae_ref,
                mdrnn_ref,
                spec,
                z_mode,
                bf16,
                {
                    "env": env,
                    "backend": backend,
                    "num_envs": max(1, -(-num_envs // n)),
                    "max_steps": max_steps,
                    "seed": pool_seed(seed, w),
                    # gymnasium: the envs run inside the worker process when it has one CPU
                    "workers": (0 if cpus == 1 else cpus) if backend == "gymnasium" else cpus,
                },
                cpus,
            )
            for w in range(n)
        ]
        reports = get_within(
            ray, [w.report.remote() for w in workers], settings, "the rollout workers"
        )
        check_same_code([(node, fp) for node, fp, _ in reports])
        return cls(ray, workers, settings, [pid for _, _, pid in reports])

    def run(
        self,
        params: np.ndarray,
        jobs: Sequence[tuple],  # (candidate, seed) or (candidate, seed, mirrored): RolloutEngine's
        early_stop: int | None = None,
        on_episode=None,
    ) -> RolloutResult:
        start = time.perf_counter()
        params_ref = self.ray.put(np.asarray(params, dtype=np.float32))
        chunks = balanced_chunks(len(jobs), len(self.workers))
        returns = np.zeros(len(jobs), np.float64)
        lengths = np.zeros(len(jobs), np.int64)
        env_steps = 0
        busy: dict[int, float] = {}

        def call(worker, chunk):
            return worker.run.remote(params_ref, [jobs[i] for i in chunk], early_stop)

        def on_done(index, result):
            nonlocal env_steps
            chunk = chunks[index]
            returns[chunk], lengths[chunk] = result[0], result[1]
            env_steps += int(result[2])
            worker = index % len(self.workers)  # chunk i starts on worker i (run_chunks)
            busy[worker] = busy.get(worker, 0.0) + float(result[3])
            if on_episode is not None:
                for job in chunk:
                    on_episode(job, float(returns[job]))

        self.reruns += run_chunks(self.ray, self.workers, chunks, call, on_done, self.settings)
        self.busy_seconds = max(busy.values(), default=0.0)
        return RolloutResult(returns, lengths, env_steps, time.perf_counter() - start)

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
