"""The batched rollout engine: many environments, many candidates, one network call a step.

A list of jobs (candidate, seed) is spread over the environment slots; each slot runs its jobs
back to back, starting the next as soon as its episode ends, so no slot waits for the slowest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldmodels.controller.policy import WorldModelPolicy
from worldmodels.envs.carracing import VecCarRacing


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
    """Runs controller candidates in a batch of environments through V, M and C."""

    def __init__(self, policy: WorldModelPolicy, env: VecCarRacing):
        self.policy = policy
        self.env = env

    def run(
        self,
        params: np.ndarray,
        jobs: Sequence[tuple[int, int | None]],
        early_stop: int | None = None,
        on_episode=None,
    ) -> RolloutResult:
        """Play one episode per job ``(candidate row in params, seed)``; returns per job.

        ``early_stop``: end an episode after this many steps without a positive reward, a
        training-only shortcut (hopeless episodes end early and keep what they scored);
        evaluation never uses it. ``on_episode(job, return)`` is called as each episode ends.
        """
        params = np.asarray(params, dtype=np.float32)
        if params.ndim != 2 or params.shape[1] != self.policy.spec.num_params:
            raise ValueError(
                f"expected params (candidates, {self.policy.spec.num_params}), got {params.shape}"
            )
        n = self.env.num_envs
        params_t = torch.as_tensor(params, device=self.policy.device)
        returns = np.zeros(len(jobs), np.float64)
        lengths = np.zeros(len(jobs), np.int64)
        job_of = np.full(n, -1)
        since_reward = np.zeros(n, np.int64)
        queue = list(range(len(jobs)))
        self.policy.reset(n)
        env_steps, start = 0, time.perf_counter()

        def assign(slots: np.ndarray) -> np.ndarray:
            """Give each slot its next job; returns the mask of slots to reset."""
            mask = np.zeros(n, bool)
            seeds: list[int | None] = [None] * n
            for s in slots:
                if queue:
                    j = queue.pop(0)
                    job_of[s], since_reward[s], mask[s] = j, 0, True
                    seeds[s] = jobs[j][1]
                else:
                    job_of[s] = -1
            ids = np.flatnonzero(mask)
            if ids.size:
                self.policy.start(ids, [seeds[s] for s in ids])
            return mask, seeds

        mask, seeds = assign(np.arange(n))
        obs = self.env.reset(mask=mask, seeds=seeds)
        while (job_of >= 0).any():
            active = job_of >= 0
            ids = np.flatnonzero(active)
            candidates = np.array([jobs[j][0] for j in job_of[ids]])
            actions = np.zeros((n, self.policy.spec.action_size), np.float32)
            actions[ids], _ = self.policy.act(obs[ids], ids, params_t[candidates])
            result = self.env.step(actions, active)
            env_steps += ids.size
            returns[job_of[ids]] += result.reward[ids]
            lengths[job_of[ids]] += 1
            since_reward[ids] = np.where(result.reward[ids] > 0, 0, since_reward[ids] + 1)
            ended = (result.terminated | result.truncated) & active
            if early_stop is not None:
                ended |= active & (since_reward >= early_stop)
            obs = result.obs
            if ended.any():
                finished = np.flatnonzero(ended)
                if on_episode is not None:
                    for s in finished:
                        on_episode(int(job_of[s]), float(returns[job_of[s]]))
                mask, seeds = assign(finished)
                if mask.any():
                    obs = self.env.reset(mask=mask, seeds=seeds)
        return RolloutResult(returns, lengths, env_steps, time.perf_counter() - start)

    def close(self) -> None:
        self.env.close()
