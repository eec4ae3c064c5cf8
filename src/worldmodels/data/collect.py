"""Collect exploration rollouts into an episode store, batched across environments.

Every environment slot runs episodes back to back: when its episode ends, the slot is written
out and immediately starts the next missing episode, so no slot waits for the slowest one.
Episode ``i`` is seeded ``seed + i`` (on either backend) and its policy draws from a generator
seeded by ``(seed, i)``; a killed run started again collects only the episodes still missing. With
``min_length`` (Doom: the paper drops episodes of <= 100 frames), an episode that ends sooner
is not written and its index is played again with a seed drawn from ``(seed, i, try)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodels.config import CollectConfig, to_dict
from worldmodels.data.policies import policy_for
from worldmodels.data.store import ACTION_ENCODINGS, StoreWriter
from worldmodels.envs import env_id_for, make_vec_env
from worldmodels.utils.device import torch_threads


@dataclass
class CollectSummary:
    episodes_new: int
    episodes_total: int
    frames_new: int
    seconds: float
    backend: str

    @property
    def frames_per_second(self) -> float:
        return self.frames_new / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"collected {self.episodes_new} episodes ({self.frames_new} frames) in "
            f"{self.seconds:.1f} s, {self.frames_per_second:.0f} frames/s on {self.backend}; "
            f"store holds {self.episodes_total} episodes"
        )


MAX_ATTEMPTS = 100  # tries of one episode index at reaching min_length before giving up


class _Slot:
    """The steps of the episode running in one environment slot.

    ``attempt`` counts the tries of this episode index that ended shorter than
    ``min_length`` and were dropped: try 0 plays seed ``seed + index`` as always, a later try
    a seed drawn from ``(seed, index, attempt)``, so a resumed run replays the same tries.
    """

    def __init__(self, index: int, attempt: int, config: CollectConfig):
        self.index, self.attempt = index, attempt
        self.seed = config.seed + index if attempt == 0 else pool_seed(config.seed, index, attempt)
        self.rng = np.random.default_rng([config.seed, index, *([attempt] if attempt else [])])
        self.obs, self.actions, self.rewards, self.terminated, self.truncated = [], [], [], [], []

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "obs": np.stack(self.obs),
            "actions": np.asarray(self.actions, np.float32),
            "rewards": np.asarray(self.rewards, np.float32),
            "terminated": np.asarray(self.terminated, bool),
            "truncated": np.asarray(self.truncated, bool),
        }


def store_identity(config: CollectConfig, backend: str) -> dict:
    from worldmodels.agent import agent_digest

    return {
        "env": config.env,
        "env_id": env_id_for(config.env),
        "backend": backend,
        "policy": config.policy,
        "max_steps": config.max_steps,
        "seed": config.seed,
        "frame_shape": [64, 64, 3],
        **({"min_length": config.min_length} if config.min_length else {}),
        **(
            {
                "agent": str(Path(config.agent).resolve()),
                "agent_digest": agent_digest(config.agent),
                "agent_noise": config.agent_noise,
            }
            if config.policy == "agent"
            else {}
        ),
        **(
            {"action_encoding": ACTION_ENCODINGS[config.env]}
            if config.env in ACTION_ENCODINGS
            else {}
        ),
    }


def open_store_for(config: CollectConfig, out: str, backend: str) -> StoreWriter:
    """The store at ``out`` for this collection (new, or one it can resume)."""
    identity = store_identity(config, backend)
    return StoreWriter(out, "episodes", identity, extra={"config": to_dict(config)})


def pool_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([*keys]).generate_state(1)[0] >> 2)


def collect_episodes(
    config: CollectConfig,
    writer: StoreWriter,
    backend: str,
    indices: list[int],
    env_seed: int,
    progress: bool = True,
) -> int:
    """Play and write the episodes ``indices`` on ``num_envs`` slots; returns frames written."""
    # one torch thread: preprocessing is light, and idle OpenMP threads would spin on the
    # cores the environments need
    with torch_threads(1):
        return _run(config, writer, backend, list(indices), env_seed, progress)


def _run(config, writer, backend, todo, env_seed, progress) -> int:
    num_envs = min(config.num_envs, len(todo))
    env = make_vec_env(
        config.env,
        backend,
        num_envs,
        config.max_steps,
        seed=env_seed,
        workers=config.workers,
        quiet=True,
    )
    policy = policy_for(config, num_envs)
    queue = [(index, 0) for index in todo]
    slots: list[_Slot | None] = [None] * num_envs
    seeds: list[int | None] = [None] * num_envs
    starting = np.zeros(num_envs, bool)
    frames = 0
    bar = tqdm(total=len(todo), desc="collect", unit="ep", disable=not progress)
    start = time.perf_counter()

    def start_next(s: int) -> None:
        slots[s] = slot = _Slot(*queue.pop(0), config) if queue else None
        if slot is not None:
            policy.start(s, slot.rng)
            seeds[s], starting[s] = slot.seed, True

    try:
        obs = env.reset(mask=np.zeros(num_envs, bool))
        for s in range(num_envs):
            start_next(s)
        obs = env.reset(mask=starting, seeds=seeds)
        while any(slot is not None for slot in slots):
            active = np.array([slot is not None for slot in slots])
            small = np.zeros((num_envs, 64, 64, 3), np.uint8)
            small[active] = env.preprocess(obs[active])
            actions = policy.act(small, active)
            result = env.step(actions, active)
            starting[:] = False
            for s in np.flatnonzero(active):
                slot = slots[s]
                slot.obs.append(small[s])
                slot.actions.append(actions[s])
                slot.rewards.append(result.reward[s])
                slot.terminated.append(result.terminated[s])
                slot.truncated.append(result.truncated[s])
                if not (result.terminated[s] or result.truncated[s]):
                    continue
                if len(slot.obs) < config.min_length:
                    queue.insert(0, (slot.index, retry_attempt(slot, config)))
                else:
                    _finish(writer, slot)
                    frames += len(slot.obs)
                    bar.update(1)
                    bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.0f}")
                start_next(s)
            obs = env.reset(mask=starting, seeds=seeds) if starting.any() else result.obs
    finally:
        bar.close()
        env.close()
    return frames


def retry_attempt(slot: _Slot, config: CollectConfig) -> int:
    """The next try of a dropped (too short) episode, or a clear error after too many."""
    if slot.attempt + 1 >= MAX_ATTEMPTS:
        raise RuntimeError(
            f"episode {slot.index}: {MAX_ATTEMPTS} tries all ended before min_length "
            f"{config.min_length} steps (the last after {len(slot.obs)}); lower --min-length"
        )
    return slot.attempt + 1


def _finish(writer: StoreWriter, slot: _Slot):
    arrays = slot.arrays()
    meta = {
        "return": float(arrays["rewards"].sum()),
        "length": len(arrays["rewards"]),
        "seed": slot.seed,  # the episode's own seed, on either backend
        "dropped_before": slot.attempt,  # shorter tries of this index dropped (min_length)
    }
    writer.add(slot.index, arrays, meta)
