"""Collection on Ray: workers write finished episodes straight into one shared episode store.

The driver opens the store (manifest, identity), cuts the missing episode indices into chunks
and keeps every worker busy with them. A worker attaches to the store without touching the
manifest and writes each episode atomically under its own index, so the store ends exactly as
a one-machine run leaves it: same files, same seeds (gymnasium), no duplicates. A chunk whose
worker died is run again elsewhere and skips the episodes already written. The store must be
on a path every node sees (NFS, a cluster file system); a worker that cannot see it says so.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from worldmodels.config import CollectConfig, to_dict
from worldmodels.data.collect import collect_episodes, pool_seed, store_identity
from worldmodels.data.store import StoreError, StoreWriter
from worldmodels.distributed.cluster import (
    RaySettings,
    check_same_code,
    connect,
    get_within,
    node_report,
    run_chunks,
    worker_count,
)


class CollectWorker:
    """Body of one Ray actor: collects the episode indices it is given into the shared store."""

    def __init__(self, store: str, identity: dict, config: dict, backend: str, threads: int):
        from worldmodels.config import from_dict

        self.store, self.identity, self.backend = store, identity, backend
        self.config = from_dict(CollectConfig, config)
        # gymnasium: the envs run inside the worker process when it has one CPU
        self.config.workers = 0 if threads == 1 and backend == "gymnasium" else threads

    def report(self) -> tuple[str, str]:
        return node_report()

    def collect(self, indices: list[int], env_seed: int) -> int:
        try:
            writer = StoreWriter.attach(self.store, "episodes", self.identity)
        except StoreError as e:
            node = node_report()[0]
            raise StoreError(
                f"worker on {node} cannot use the store: {e}; collection on Ray needs the store "
                "on a path every node shares"
            ) from None
        existing = writer.existing_indices()
        todo = [i for i in indices if i not in existing]
        if not todo:
            return 0
        return collect_episodes(self.config, writer, self.backend, todo, env_seed, progress=False)


def collect_on_ray(
    config: CollectConfig,
    writer: StoreWriter,
    backend: str,
    todo: list[int],
    settings: RaySettings,
    progress: bool = True,
) -> int:
    """Collect the episodes ``todo`` into ``writer``'s store on Ray workers; returns frames."""
    ray = connect(settings)
    n = worker_count(ray, settings)
    actor = ray.remote(CollectWorker).options(
        num_cpus=settings.cpus_per_worker, max_restarts=-1, max_task_retries=0
    )
    per_worker = config.__class__(**{**to_dict(config), "num_envs": max(1, config.num_envs // n)})
    store = str(Path(writer.path).resolve())
    identity = store_identity(config, backend)
    workers = [
        actor.remote(store, identity, to_dict(per_worker), backend, settings.cpus_per_worker)
        for _ in range(n)
    ]
    try:
        check_same_code(
            get_within(
                ray, [w.report.remote() for w in workers], settings, "the collection workers"
            )
        )
        size = per_worker.num_envs
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        existing = len(writer.existing_indices())
        frames = 0
        bar = tqdm(total=len(todo), desc="collect (ray)", unit="ep", disable=not progress)

        def call(worker, chunk):
            # EnvPool seeds a pool once: each chunk (and each resumed run) gets its own seed
            return worker.collect.remote(chunk, pool_seed(config.seed, existing, chunk[0]))

        def on_done(index, result):
            nonlocal frames
            frames += result
            bar.update(len(chunks[index]))

        try:
            run_chunks(ray, workers, chunks, call, on_done, settings)
        finally:
            bar.close()
    finally:
        for w in workers:
            ray.kill(w)
    return frames
