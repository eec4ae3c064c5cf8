"""The batched rollout engine: many environments, many candidates, one network call a step.

A list of jobs (candidate, seed) is spread over the environment slots; each slot runs its jobs
back to back, starting the next as soon as its episode ends, so no slot waits for the slowest.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldmodels.controller.policy import WorldModelPolicy
from worldmodels.envs import make_vec_env
from worldmodels.envs.carracing import VecCarRacing, mirror_actions, mirror_frames
from worldmodels.utils.device import torch_threads


@dataclass
class RolloutResult:
    returns: np.ndarray  # (jobs,) total reward of each job's episode
    lengths: np.ndarray  # (jobs,) steps of each episode
    env_steps: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / max(self.seconds, 1e-9)


class RolloutEngine:
    """Runs controller candidates in batches of environments through V, M and C.

    ``env`` is one batch, or a list of batches (groups) stepped in turn so that the networks
    and the environments overlap: while one group's environments step (EnvPool threads or
    gymnasium worker processes), the actions of the next group are computed. One group is
    the synchronous engine (environments, then networks, then environments ...).
    """

    def __init__(self, policy: WorldModelPolicy, env: VecCarRacing | Sequence[VecCarRacing]):
        self.policy = policy
        self.groups = list(env) if isinstance(env, list | tuple) else [env]
        self.env = self.groups[0] if len(self.groups) == 1 else None
        self.offsets = np.cumsum([0] + [g.num_envs for g in self.groups])

    def run(
        self,
        params: np.ndarray,
        jobs: Sequence[tuple],
        early_stop: int | None = None,
        on_episode=None,
    ) -> RolloutResult:
        """Play one episode per job ``(candidate row in params, seed)``, or ``(candidate, seed,
        mirrored)``: with ``mirrored`` true, on the mirror image of the seed's track (C sees
        each frame flipped left-right, its steering is negated); returns per job.

        ``early_stop``: end an episode after this many steps without a positive reward, a
        training-only shortcut (hopeless episodes end early and keep what they scored);
        evaluation never uses it. ``on_episode(job, return)`` is called as each episode ends.
        An episode's course depends only on its job (seeded track and noise, its own LSTM
        state), not on the slot, the group or what runs beside it.
        """
        params = np.asarray(params, dtype=np.float32)
        if params.ndim != 2 or params.shape[1] != self.policy.spec.num_params:
            raise ValueError(
                f"expected params (candidates, {self.policy.spec.num_params}), got {params.shape}"
            )
        # overlapped on the CPU: the networks take one core while the environments' threads
        # take the others (idle OpenMP threads would spin on the cores the envs need)
        overlapped = len(self.groups) > 1 and self.policy.device.type == "cpu"
        with torch_threads(1) if overlapped else contextlib.nullcontext():
            return self._run(params, jobs, early_stop, on_episode)

    def _run(self, params, jobs, early_stop, on_episode) -> RolloutResult:
        n = int(self.offsets[-1])
        params_t = torch.as_tensor(params, device=self.policy.device)
        returns = np.zeros(len(jobs), np.float64)
        lengths = np.zeros(len(jobs), np.int64)
        job_of = np.full(n, -1)  # global slot -> its job (-1: idle)
        since_reward = np.zeros(n, np.int64)
        queue = list(range(len(jobs)))
        mirrored = np.array([len(job) > 2 and bool(job[2]) for job in jobs], dtype=bool)
        self.policy.reset(n)
        env_steps, start = 0, time.perf_counter()

        def start_jobs(g: int, local: np.ndarray) -> np.ndarray:
            """Give group g's slots ``local`` their next jobs and reset those; returns obs."""
            env, offset = self.groups[g], self.offsets[g]
            mask = np.zeros(env.num_envs, bool)
            seeds: list[int | None] = [None] * env.num_envs
            for s in local:
                job_of[offset + s] = queue.pop(0) if queue else -1
                if job_of[offset + s] >= 0:
                    mask[s], since_reward[offset + s] = True, 0
                    seeds[s] = jobs[job_of[offset + s]][1]
            ids = np.flatnonzero(mask)
            if ids.size:
                self.policy.start(offset + ids, [seeds[s] for s in ids])
            return env.reset(mask=mask, seeds=seeds)

        def send(g: int, obs: np.ndarray) -> bool:
            """Compute group g's actions and start its step; False when it has nothing left."""
            env, offset = self.groups[g], self.offsets[g]
            local = np.flatnonzero(job_of[offset : offset + env.num_envs] >= 0)
            if not local.size:
                return False
            candidates = np.array([jobs[j][0] for j in job_of[offset + local]])
            flipped = mirrored[job_of[offset + local]]
            seen = mirror_frames(obs[local], flipped) if flipped.any() else obs[local]
            actions = np.zeros((env.num_envs, self.policy.spec.action_size), np.float32)
            actions[local], _ = self.policy.act(seen, offset + local, params_t[candidates])
            if flipped.any():
                actions[local[flipped]] = mirror_actions(actions[local[flipped]])
            active = np.zeros(env.num_envs, bool)
            active[local] = True
            env.step_async(actions, active)
            return True

        in_flight = []
        for g, env in enumerate(self.groups):
            obs = start_jobs(g, np.arange(env.num_envs))
            if send(g, obs):
                in_flight.append(g)
        while in_flight:
            g = in_flight.pop(0)
            env, offset = self.groups[g], self.offsets[g]
            result = env.step_wait()
            slots = offset + np.arange(env.num_envs)
            active = job_of[slots] >= 0
            ids = slots[active]
            env_steps += ids.size
            returns[job_of[ids]] += result.reward[active]
            lengths[job_of[ids]] += 1
            since_reward[ids] = np.where(result.reward[active] > 0, 0, since_reward[ids] + 1)
            ended = (result.terminated | result.truncated) & active
            if early_stop is not None:
                ended |= active & (since_reward[slots] >= early_stop)
            obs = result.obs
            if ended.any():
                finished = np.flatnonzero(ended)
                if on_episode is not None:
                    for s in finished:
                        on_episode(int(job_of[offset + s]), float(returns[job_of[offset + s]]))
                obs = start_jobs(g, finished)
            if send(g, obs):
                in_flight.append(g)
        return RolloutResult(returns, lengths, env_steps, time.perf_counter() - start)

    def close(self) -> None:
        for env in self.groups:
            env.close()


def make_env_groups(
    backend: str,
    num_envs: int,
    max_steps: int,
    groups: int,
    workers: int | None = None,
    env: str = "carracing",
    seed: int = 0,
) -> list:
    """``num_envs`` environments in ``groups`` batches that the engine steps in turn (the
    networks of one group run while the others' environments step); 1 = synchronous.
    ``workers``: EnvPool threads or gymnasium processes per group (default: the cores shared
    out among the groups). ``seed`` seeds each batch at make (EnvPool); seeded jobs do not
    depend on it."""
    groups = max(1, min(groups, num_envs))
    if workers is None and groups > 1:
        workers = max(1, (os.cpu_count() or 1) // groups)
    sizes = [len(range(g, num_envs, groups)) for g in range(groups)]
    made = []
    try:
        for size in sizes:
            made.append(
                make_vec_env(
                    env,
                    backend=backend,
                    num_envs=size,
                    max_steps=max_steps,
                    seed=seed,
                    workers=workers,
                    quiet=bool(made),
                )
            )
    except BaseException:
        for batch in made:
            batch.close()
        raise
    return made
