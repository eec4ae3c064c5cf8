"""Where a stage's work runs: on this machine, or spread over a Ray cluster.

This is the one place that chooses. The stages ask here for what they need (the collection of
missing episodes, an engine that plays controller candidates in the real game, a runner of dream
batches) and get the local implementation, or with ``cluster`` (a
``distributed.cluster.RaySettings``, from ``--ray``) its Ray counterpart with the same
interface. The local modules (``data.collect``, ``controller.rollout``, ``dream.env``) know
nothing of Ray; the ``distributed`` modules build on them. Without ``cluster`` nothing here
imports Ray.
"""

from __future__ import annotations

import time
from pathlib import Path

from worldmodels.config import CollectConfig
from worldmodels.data.collect import (
    CollectSummary,
    collect_episodes,
    open_store_for,
    pool_seed,
)
from worldmodels.data.policies import policy_for
from worldmodels.envs import env_id_for, resolve_backend


def collect(config: CollectConfig, out: str, progress: bool = True, cluster=None) -> CollectSummary:
    """Fill the store at ``out`` with ``config.episodes`` episodes, resuming if it has some.

    With ``cluster`` the episodes are spread over Ray workers writing into the same store,
    which must then be on a path every node sees.
    """
    config.validate()
    env_id_for(config.env)
    policy_for(config, 1)  # an unknown name or agent fails before anything is written
    backend = resolve_backend(config.backend, env=config.env)
    writer = open_store_for(config, out, backend)
    done = writer.existing_indices()
    todo = [i for i in range(config.episodes) if i not in done]
    start = time.perf_counter()
    frames = 0
    if todo and cluster is not None:
        from worldmodels.distributed.collect import collect_on_ray

        frames = collect_on_ray(config, writer, backend, todo, cluster, progress)
    elif todo:
        frames = collect_episodes(
            config, writer, backend, todo, pool_seed(config.seed, len(done)), progress
        )
    total = len(writer.existing_indices())
    writer.write_manifest(episodes=total)
    return CollectSummary(len(todo), total, frames, time.perf_counter() - start, backend)


def rollout_engine(
    policy,
    *,
    env: str,
    backend: str,
    num_envs: int,
    max_steps: int,
    seed: int = 0,
    workers: int | None = None,
    groups: int = 1,
    cluster=None,
    vae_path: str | Path | None = None,
    mdrnn_path: str | Path | None = None,
):
    """Something with ``run(params, jobs, early_stop, on_episode)`` and ``close()`` that plays
    episodes of ``policy`` (a ``WorldModelPolicy``) in the real game.

    Local: the batched engine over ``num_envs`` environments in ``groups`` overlapped batches.
    With ``cluster``: Ray workers, each with its own copy of V and M loaded from
    ``vae_path`` / ``mdrnn_path`` and its share of the ``num_envs`` environments.
    """
    if cluster is not None:
        from worldmodels.distributed.rollouts import RayRolloutPool

        if vae_path is None or (policy.spec.uses_memory and mdrnn_path is None):
            raise ValueError("rollouts on Ray load V and M from files: give their paths")
        return RayRolloutPool.start(
            cluster,
            vae_path,
            mdrnn_path if policy.spec.uses_memory else None,
            policy.spec.to_dict(),
            policy.z_mode,
            bf16=policy.bf16,
            backend=backend,
            num_envs=num_envs,
            max_steps=max_steps,
            seed=seed,
            env=env,
        )
    from worldmodels.controller.rollout import RolloutEngine, make_env_groups

    batches = make_env_groups(backend, num_envs, max_steps, groups, workers, env=env, seed=seed)
    return RolloutEngine(policy, batches)


def dream_runner(mdrnn, latents, spec, dream, cluster=None, mdrnn_path: str | Path | None = None):
    """Runs batches of dreams: one after another here, or side by side on Ray workers (each
    with its own copy of M, loaded from ``mdrnn_path``)."""
    if cluster is None:
        from worldmodels.dream.train import LocalDreams

        return LocalDreams(mdrnn, latents, spec, dream)
    from worldmodels.config import to_dict
    from worldmodels.distributed.dreams import RayDreamPool

    if mdrnn_path is None:
        raise ValueError("dreams on Ray load M from its file: give its path")
    return RayDreamPool.start(cluster, mdrnn_path, latents, spec.to_dict(), to_dict(dream))
