"""CMA-ES in M's dream across a Ray cluster: batches of dreams, once per worker.

Each worker (a Ray actor) holds M and the dreams' starting latents, shipped once when the pool
starts. A generation's dreams are cut into tasks (rows of controller parameters, their
starting episodes and the noise seed of the batch); each task runs on one worker as the local
trainer runs it, so a task gives the same dreams wherever it runs. A task whose worker dies is
run again on another (``run_chunks``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from worldmodels.distributed.cluster import (
    RaySettings,
    check_same_code,
    connect,
    get_within,
    gpus_per_worker,
    node_report,
    run_chunks,
    worker_count,
)


class DreamWorker:
    """Body of one Ray actor: M, the starting latents and the dream's settings."""

    def __init__(
        self,
        mdrnn_bytes: bytes,
        mu: np.ndarray,
        logvar: np.ndarray,
        spec: dict,
        dream: dict,
        threads: int,
    ):
        import torch

        from worldmodels.config import DreamConfig, from_dict
        from worldmodels.controller.model import ControllerSpec
        from worldmodels.dream.env import InitialLatents
        from worldmodels.memory.train import load_mdrnn
        from worldmodels.utils.device import pick_device

        torch.set_num_threads(threads)
        device = pick_device("auto")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mdrnn.pt"
            path.write_bytes(mdrnn_bytes)
            self.mdrnn = load_mdrnn(path, device)
        self.latents = InitialLatents(torch.from_numpy(mu), torch.from_numpy(logvar), "driver")
        self.spec = ControllerSpec(**spec)
        self.dream = from_dict(DreamConfig, dream)

    def report(self) -> tuple[str, str, int]:
        return (*node_report(), os.getpid())

    def run(self, params: np.ndarray, episodes: np.ndarray, seed: int):
        import torch

        from worldmodels.dream.env import dream_task

        out = dream_task(
            self.mdrnn,
            self.latents,
            self.spec,
            self.dream,
            torch.from_numpy(params),
            torch.from_numpy(episodes),
            seed,
        )
        return out.returns.cpu().numpy(), out.lengths.cpu().numpy(), int(out.steps)


class RayDreamPool:
    """Runs dream tasks on Ray workers; ``parallel`` says how many run at once."""

    def __init__(self, ray, workers: list, settings: RaySettings, pids: list[int]):
        self.ray, self.workers, self.settings, self.pids = ray, workers, settings, pids
        self.reruns = 0

    @property
    def parallel(self) -> int:
        return len(self.workers)

    @classmethod
    def start(
        cls, settings: RaySettings, mdrnn_path: str | Path, latents, spec: dict, dream: dict
    ) -> RayDreamPool:
        ray = connect(settings)
        n = worker_count(ray, settings)
        actor = ray.remote(DreamWorker).options(
            num_cpus=settings.cpus_per_worker,
            num_gpus=gpus_per_worker(ray, n),
            max_restarts=-1,
            max_task_retries=0,
        )
        shared = [
            ray.put(Path(mdrnn_path).read_bytes()),
            ray.put(latents.mu.cpu().numpy()),
            ray.put(latents.logvar.cpu().numpy()),
        ]
        workers = [actor.remote(*shared, spec, dream, settings.cpus_per_worker) for _ in range(n)]
        reports = get_within(
            ray, [w.report.remote() for w in workers], settings, "the dream workers"
        )
        check_same_code([(node, fp) for node, fp, _ in reports])
        return cls(ray, workers, settings, [pid for _, _, pid in reports])

    def run(self, tasks: list) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """``tasks``: (params (n, P), episodes (n,), seed); one result per task, in order."""
        results: list = [None] * len(tasks)

        def call(worker, chunk):
            params, episodes, seed = tasks[chunk[0]]
            return worker.run.remote(
                np.asarray(params, np.float32), np.asarray(episodes, np.int64), seed
            )

        def on_done(index, result):
            returns, lengths, steps = result
            # Ray hands numpy results back read-only; torch wants arrays it may write
            results[index] = (np.array(returns), np.array(lengths), steps)

        chunks = [[i] for i in range(len(tasks))]
        self.reruns += run_chunks(self.ray, self.workers, chunks, call, on_done, self.settings)
        return results

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
