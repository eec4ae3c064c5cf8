"""A batch of CarRacing environments behind one interface, on gymnasium or EnvPool.

``gymnasium`` is the reference: every reported score is measured on it, with explicit
per-episode seeds. ``envpool`` is a C++ port, about 10x faster per core, used by default for
collection and training when installed. It honours the same per-episode seeds (same seed, same
track and frames; see ``EnvPoolCarRacing``), but its tracks and frames (drawn with OpenCV) are
not identical with gymnasium's for the same seed.

Both backends follow the same contract: ``step`` never resets an environment by itself. An
environment whose episode ended must be reset with ``reset(mask=...)`` before it is stepped
again; ``step(actions, active=mask)`` lets the caller leave finished or idle slots alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from worldmodels.envs import DEFAULT_MAX_STEPS
from worldmodels.envs.workers import EnvWorkers

OBS_SHAPE = (96, 96, 3)
ACTION_LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)


STEERING = 0  # the action's steering component: -1 full left, +1 full right


def mirror_frames(frames: np.ndarray, which: np.ndarray | None = None) -> np.ndarray:
    """Frames (..., H, W, C) flipped left-right: the same moment on the mirror-image track.

    CarRacing is left-right symmetric about the car (the view turns with the car, which sits
    at the middle of the frame's width), so a mirrored episode, with its steering negated
    (``mirror_actions``), is a valid episode of the mirrored track: left-hand bends become
    right-hand ones. ``which``: a boolean mask over the first axis, to flip only those frames.
    """
    if which is None:
        return np.ascontiguousarray(frames[..., ::-1, :])
    out = np.array(frames, copy=True)
    out[which] = frames[which][..., ::-1, :]
    return out


def mirror_actions(actions: np.ndarray) -> np.ndarray:
    """CarRacing actions (..., 3) of the mirrored episode: steering negated, gas and brake kept."""
    out = np.array(actions, dtype=np.float32, copy=True)
    out[..., STEERING] = -out[..., STEERING]
    return out


def check_mirrorable(store) -> None:
    """Mirroring needs CarRacing data (a left-right symmetric game, action 0 the steering)."""
    env = store.manifest.get("identity", {}).get("env")
    if env != "carracing":
        raise ValueError(
            f"{store.path}: mirror is for CarRacing data (a left-right symmetric game whose "
            f"action 0 is the steering); this store holds {env!r} episodes"
        )


@dataclass
class StepResult:
    obs: np.ndarray  # (N, 96, 96, 3) uint8
    reward: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool


class VecCarRacing:
    """Base class: ``num_envs`` CarRacing environments stepped as one batch."""

    backend: str

    def __init__(self, num_envs: int, max_steps: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.num_envs = num_envs
        self.max_steps = max_steps
        self._obs = np.zeros((num_envs, *OBS_SHAPE), dtype=np.uint8)

    @staticmethod
    def preprocess(frames: np.ndarray) -> np.ndarray:
        """Raw frames -> the 64x64 frames V sees (each env class brings its own)."""
        from worldmodels.envs.preprocess import preprocess_frames

        return preprocess_frames(frames)

    def reset(self, mask: np.ndarray | None = None, seeds: list[int | None] | None = None):
        """Reset the environments where ``mask`` is true (all when None); returns all obs.

        ``seeds[i]`` seeds environment i's new episode: the same seed gives the same episode
        start on the same backend; ``None`` continues the environment's own random stream.
        """
        mask = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        if mask.any():
            ids = np.flatnonzero(mask)
            self._obs[ids] = self._reset_ids(ids, seeds)
        return self._obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step with ``actions`` (N, 3); slots outside ``active`` are left as they were."""
        self.step_async(actions, active)
        return self.step_wait()

    def step_async(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Start a step (see ``step``); the environments run while the caller does other
        work, and ``step_wait`` returns the result. One step in flight at a time."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, 3):
            raise ValueError(f"expected actions of shape ({self.num_envs}, 3), got {actions.shape}")
        if getattr(self, "_in_flight", None) is not None:
            raise RuntimeError("step_async called twice without step_wait")
        actions = np.clip(actions, ACTION_LOW, ACTION_HIGH)
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, bool)
        ids = np.flatnonzero(active)
        if ids.size:
            self._send_ids(ids, actions)
        self._in_flight = ids

    def step_wait(self) -> StepResult:
        ids, self._in_flight = self._in_flight, None
        if ids is None:
            raise RuntimeError("step_wait called with no step in flight")
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        if ids.size:
            obs, r, te, tr = self._receive_ids(ids)
            self._obs[ids], reward[ids], terminated[ids], truncated[ids] = obs, r, te, tr
        return StepResult(self._obs.copy(), reward, terminated, truncated)

    def _reset_ids(self, ids: np.ndarray, seeds):
        raise NotImplementedError

    def _send_ids(self, ids: np.ndarray, actions: np.ndarray) -> None:
        raise NotImplementedError

    def _receive_ids(self, ids: np.ndarray):
        """(obs, reward, terminated, truncated) of the step sent to ``ids``, in ids' order."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _play_gym(env, cmd: str, arg):
    if cmd == "reset":
        return env.reset(seed=arg)[0]
    return env.step(arg)[:4]


def _make_gym_env(max_steps: int):
    import gymnasium as gym

    return gym.make("CarRacing-v3", max_episode_steps=max_steps)


class GymnasiumCarRacing(VecCarRacing):
    """gymnasium ``CarRacing-v3``, the reference, spread over ``workers`` subprocesses.

    Environment i lives in worker ``i % workers``; ``workers=0`` runs them in this process.
    A worker that raises or dies stops the caller with its traceback, never a hang.
    """

    backend = "gymnasium"

    def __init__(
        self, num_envs: int = 1, max_steps: int = DEFAULT_MAX_STEPS, workers: int | None = None
    ):
        super().__init__(num_envs, max_steps)
        self._pool = EnvWorkers("gymnasium", _make_gym_env, _play_gym, num_envs, max_steps, workers)
        self.workers = self._pool.workers

    def _reset_ids(self, ids, seeds):
        items = {
            int(i): (None if seeds is None or seeds[i] is None else int(seeds[i])) for i in ids
        }
        out = self._pool.run("reset", items)
        return np.stack([out[int(i)] for i in ids])

    def _send_ids(self, ids, actions):
        self._pending = self._pool.send("step", {int(i): actions[i] for i in ids})

    def _receive_ids(self, ids):
        out = self._pool.receive(self._pending)
        obs, r, te, tr = zip(*(out[int(i)] for i in ids), strict=True)
        return np.stack(obs), np.asarray(r, np.float32), np.asarray(te, bool), np.asarray(tr, bool)

    def close(self):
        self._pool.close()


class EnvPoolCarRacing(VecCarRacing):
    """EnvPool's C++ ``CarRacing-v3`` with per-episode seeds, like gymnasium.

    EnvPool fixes an environment's seed when its pool is made, and the k-th track of an
    environment depends only on (seed, k). So a seeded reset makes a new pool (about 10 ms)
    whose environments carry the requested seeds: the same seed gives the same track and
    frames as any other seeded reset with it, on any slot. An unseeded reset continues the
    slot's current environment with its next track. Slot i starts on seed ``seed + i``.
    Slots that live in different pools are stepped together (send to all, then receive).
    """

    backend = "envpool"

    def __init__(
        self,
        num_envs: int = 1,
        max_steps: int = DEFAULT_MAX_STEPS,
        seed: int = 0,
        num_threads: int = 0,
    ):
        super().__init__(num_envs, max_steps)
        self.seed = seed
        self.num_threads = num_threads or os.cpu_count() or 1
        self._pool_of: list = [None] * num_envs  # slot -> the pool its environment lives in
        self._local = np.zeros(num_envs, np.int64)  # slot -> its env_id in that pool
        self._move_to_new_pool(np.arange(num_envs), [seed + i for i in range(num_envs)])

    def _move_to_new_pool(self, ids: np.ndarray, seeds: list[int]) -> np.ndarray:
        """Put slots ``ids`` in a new pool seeded ``seeds``; returns their first frames."""
        import envpool

        pool = envpool.make(
            "CarRacing-v3",
            env_type="gymnasium",
            num_envs=len(ids),
            batch_size=len(ids),
            seed=[int(s) for s in seeds],
            max_episode_steps=self.max_steps,
            num_threads=min(self.num_threads, len(ids)),
        )
        old = {id(p): p for p in (self._pool_of[i] for i in ids) if p is not None}
        for k, i in enumerate(ids):
            self._pool_of[i], self._local[i] = pool, k
        for p in old.values():  # a pool no slot uses any more is closed
            if all(q is not p for q in self._pool_of):
                p.close()
        obs, info = pool.reset()
        return self._in_order(np.arange(len(ids)), info, obs)[0]

    def _groups(self, ids: np.ndarray):
        """(pool, slots in it, their env_ids there) for the pools holding slots ``ids``."""
        groups: dict[int, list[int]] = {}
        for i in ids:
            groups.setdefault(id(self._pool_of[i]), []).append(int(i))
        for slots in groups.values():
            slots = np.asarray(slots)
            yield self._pool_of[slots[0]], slots, self._local[slots]

    @staticmethod
    def _in_order(local, info, *arrays):
        """EnvPool answers in its own order: sort the arrays back into ``local``'s order."""
        got = np.asarray(info["env_id"])
        order = np.argsort(got)
        if not np.array_equal(got[order], np.sort(local)):
            raise RuntimeError(f"envpool answered for envs {got}, expected {local}")
        rank = np.searchsorted(got[order], local)
        return [np.asarray(a)[order][rank] for a in arrays]

    def _reset_ids(self, ids, seeds):
        obs = np.empty((len(ids), *OBS_SHAPE), np.uint8)
        seeded = np.array([seeds is not None and seeds[i] is not None for i in ids], bool)
        if seeded.any():
            obs[seeded] = self._move_to_new_pool(ids[seeded], [seeds[i] for i in ids[seeded]])
        unseeded = ids[~seeded]
        if unseeded.size:
            where = {int(i): k for k, i in enumerate(ids)}
            for pool, slots, local in self._groups(unseeded):
                new, info = pool.reset(env_id=local)
                obs[[where[int(i)] for i in slots]] = self._in_order(local, info, new)[0]
        return obs

    def _send_ids(self, ids, actions):
        self._sent = list(self._groups(ids))
        for pool, slots, local in self._sent:
            pool.send(actions[slots], local)

    def _receive_ids(self, ids):
        out = {}
        for pool, slots, local in self._sent:
            obs, r, te, tr, info = pool.recv()
            for i, o, *rest in zip(
                slots, *self._in_order(local, info, obs, r, te, tr), strict=True
            ):
                out[int(i)] = (o, *rest)
        obs, r, te, tr = zip(*(out[int(i)] for i in ids), strict=True)
        return np.stack(obs), np.asarray(r, np.float32), np.asarray(te, bool), np.asarray(tr, bool)

    def close(self):
        for p in {id(p): p for p in self._pool_of if p is not None}.values():
            p.close()
        self._pool_of = [None] * self.num_envs
