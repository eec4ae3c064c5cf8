"""The dream: M as a batched environment, thousands of dreams stepped as one tensor batch.

A dream starts from the latent code of the first frame of a real episode (drawn from the
series store ``encode`` wrote: ``z = mu + sigma * eps``), with M's LSTM state at zero. Each
step feeds ``[z_t, a_t (, restart)]`` to M, samples ``z_{t+1}`` from its mixture at
temperature ``tau`` (mixture weights ``softmax(log pi / tau)``, noise scaled by
``sqrt(tau)``, as in the paper), and ends the dream when the done head says so
(``sigmoid(logit) > 0.5``) or after ``max_steps`` steps (truncated). The reward is M's reward
head where it has one, otherwise +1 per step survived (Doom TakeCover's score).

The controller sees ``[z, c, h]`` (the paper's Doom setup, ``obs_mode="zch"``), ``[z, h]``
(``"zh"``) or ``z`` alone, where ``(h, c)`` is M's state *before* it takes ``z_t``: the same
thing :class:`~worldmodels.controller.policy.WorldModelPolicy` hands C in the real game.

Like the real environments, a dream never resets itself: ``step(actions, active)`` leaves
rows outside ``active`` alone and the caller resets ended rows with ``reset(mask)``. All
work is on tensors of the whole batch (or of its active rows): no Python loop over dreams.
A sampled latent that is not finite stops the dream with :class:`DreamError` naming the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from worldmodels.memory.mdrnn import MDNRNN, sample_next_z

OBS_MODES = ("zch", "zh", "z")
# what the dream shows each controller mode (the hidden-layer C sees z alone too)
OBS_MODE_OF = {"zch": "zch", "zh": "zh", "z": "z", "z_hidden": "z"}
DEFAULT_TEMPERATURE = 1.15  # the paper's Doom setting
DEFAULT_MAX_STEPS = 2100  # Doom TakeCover's episode limit
DONE_THRESHOLD = 0.5


class DreamError(ValueError):
    """M produced something a dream cannot go on from (non-finite latents)."""


@dataclass
class InitialLatents:
    """``mu`` / ``logvar`` ``(E, z)`` float32 of the first frame of ``E`` real episodes."""

    mu: Tensor
    logvar: Tensor
    source: str = ""

    def __post_init__(self):
        if self.mu.dim() != 2 or self.mu.shape != self.logvar.shape or len(self.mu) == 0:
            raise ValueError(
                f"initial latents: expected mu and logvar of one shape (E >= 1, z), got "
                f"{tuple(self.mu.shape)} and {tuple(self.logvar.shape)}"
            )
        if not (torch.isfinite(self.mu).all() and torch.isfinite(self.logvar).all()):
            raise DreamError(f"{self.source or 'initial latents'}: mu or logvar is not finite")

    @property
    def z_size(self) -> int:
        return self.mu.shape[1]

    def to(self, device: torch.device | str) -> InitialLatents:
        return InitialLatents(self.mu.to(device), self.logvar.to(device), self.source)


def load_initial_latents(
    series_path: str | Path, z_size: int | None = None, action_size: int | None = None
) -> InitialLatents:
    """The first frame's ``(mu, logvar)`` of every episode of a series store."""
    from worldmodels.memory.data import open_series

    info = open_series(series_path, z_size, action_size)
    mu = np.stack([np.asarray(ep["mu"][0], np.float32) for ep in info.store])
    logvar = np.stack([np.asarray(ep["logvar"][0], np.float32) for ep in info.store])
    return InitialLatents(torch.from_numpy(mu), torch.from_numpy(logvar), str(info.store.path))


@dataclass
class DreamStep:
    """What :meth:`DreamEnv.step` returns, every tensor over the whole batch ``N``."""

    obs: Tensor  # (N, obs_size)
    reward: Tensor  # (N,) float32
    terminated: Tensor  # (N,) bool: M's done head said so
    truncated: Tensor  # (N,) bool: max_steps reached


class DreamEnv:
    """``num_envs`` dreams in M, stepped as one batch on M's device."""

    def __init__(
        self,
        mdrnn: MDNRNN,
        latents: InitialLatents,
        num_envs: int,
        temperature: float = DEFAULT_TEMPERATURE,
        max_steps: int = DEFAULT_MAX_STEPS,
        obs_mode: str = "zch",
        done_threshold: float = DONE_THRESHOLD,
        seed: int = 0,
    ):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"unknown obs_mode {obs_mode!r}; choose one of {OBS_MODES}")
        if num_envs < 1 or max_steps < 1:
            raise ValueError(
                f"num_envs and max_steps must be positive, got {num_envs}, {max_steps}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if latents.z_size != mdrnn.z_size:
            raise ValueError(
                f"{latents.source or 'initial latents'} have z={latents.z_size}, M has "
                f"z={mdrnn.z_size}"
            )
        if mdrnn.extra_inputs not in (0, 1):
            raise ValueError(f"M has {mdrnn.extra_inputs} extra inputs; a dream feeds 0 or 1")
        self.mdrnn = mdrnn.eval()
        self.device = mdrnn.head.weight.device
        self.latents = latents.to(self.device)
        self.num_envs = num_envs
        self.temperature = float(temperature)
        self.max_steps = max_steps
        self.obs_mode = obs_mode
        self.done_threshold = done_threshold
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        n, z, hid = num_envs, mdrnn.z_size, mdrnn.hidden_size
        dtype = mdrnn.head.weight.dtype
        self.z = torch.zeros(n, z, device=self.device, dtype=dtype)
        self.h = torch.zeros(1, n, hid, device=self.device, dtype=dtype)
        self.c = torch.zeros(1, n, hid, device=self.device, dtype=dtype)
        self.t = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.first = torch.ones(n, dtype=torch.bool, device=self.device)

    # ----------------------------------------------------------------- shapes
    @property
    def action_size(self) -> int:
        return self.mdrnn.action_size

    @property
    def obs_size(self) -> int:
        z, hid = self.mdrnn.z_size, self.mdrnn.hidden_size
        return z + {"zch": 2 * hid, "zh": hid, "z": 0}[self.obs_mode]

    def seed(self, seed: int) -> None:
        """Restart the dream noise (initial episodes, z noise, mixture draws) from ``seed``."""
        self.generator.manual_seed(seed)

    def observe(self) -> Tensor:
        """The controller's inputs ``(N, obs_size)``: ``[z, c, h]``, ``[z, h]`` or ``z``."""
        if self.obs_mode == "zch":
            return torch.cat([self.z, self.c[0], self.h[0]], dim=1)
        if self.obs_mode == "zh":
            return torch.cat([self.z, self.h[0]], dim=1)
        return self.z.clone()

    # ------------------------------------------------------------------ reset
    def _mask(self, mask) -> Tensor:
        if mask is None:
            return torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        if mask.shape != (self.num_envs,):
            raise ValueError(
                f"expected a mask of shape ({self.num_envs},), got {tuple(mask.shape)}"
            )
        return mask

    @torch.no_grad()
    def reset(self, mask=None, episodes: Tensor | None = None) -> Tensor:
        """Start new dreams where ``mask`` is true (all when None); returns every observation.

        Each new dream starts from a real episode's first frame, drawn uniformly, or the
        ones given in ``episodes`` (positions in the initial latents, one per reset row).
        """
        ids = torch.nonzero(self._mask(mask)).squeeze(1)
        k = ids.numel()
        if k:
            count = len(self.latents.mu)
            if episodes is None:
                episodes = torch.randint(count, (k,), generator=self.generator, device=self.device)
            episodes = torch.as_tensor(episodes, dtype=torch.int64, device=self.device)
            if episodes.shape != (k,) or episodes.min() < 0 or episodes.max() >= count:
                raise ValueError(
                    f"episodes: expected {k} positions in 0..{count - 1}, got {episodes.tolist()}"
                )
            mu, logvar = self.latents.mu[episodes], self.latents.logvar[episodes]
            noise = torch.randn(mu.shape, generator=self.generator, device=self.device)
            self.z[ids] = (mu + torch.exp(0.5 * logvar) * noise).to(self.z.dtype)
            self.h[:, ids] = 0
            self.c[:, ids] = 0
            self.t[ids] = 0
            self.first[ids] = True
        return self.observe()

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, actions: Tensor, active=None) -> DreamStep:
        """Step the ``active`` dreams (all when None) with ``actions`` ``(N, action_size)``."""
        actions = torch.as_tensor(actions, device=self.device, dtype=self.z.dtype)
        if actions.dim() == 1 and self.action_size == 1:
            actions = actions.unsqueeze(1)
        if actions.shape != (self.num_envs, self.action_size):
            raise ValueError(
                f"expected actions of shape ({self.num_envs}, {self.action_size}), "
                f"got {tuple(actions.shape)}"
            )
        n = self.num_envs
        reward = torch.zeros(n, device=self.device)
        terminated = torch.zeros(n, dtype=torch.bool, device=self.device)
        ids = torch.nonzero(self._mask(active)).squeeze(1)
        if ids.numel():
            r, done = self._advance(ids, actions[ids])
            reward[ids], terminated[ids] = r, done
        truncated = torch.zeros(n, dtype=torch.bool, device=self.device)
        truncated[ids] = (self.t[ids] >= self.max_steps) & ~terminated[ids]
        return DreamStep(self.observe(), reward, terminated, truncated)

    def _advance(self, ids: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """One M step for rows ``ids``: new z, h, c, t; returns (reward, done) of those rows."""
        extra = None
        if self.mdrnn.extra_inputs:
            extra = self.first[ids].to(self.z.dtype).unsqueeze(1)
        state = (self.h[:, ids], self.c[:, ids])
        out, (h, c), _ = self.mdrnn.step(self.z[ids], actions, state, extra=extra)
        z = sample_next_z(out, self.temperature, generator=self.generator)
        self._check_finite(z, ids)
        self.z[ids], self.h[:, ids], self.c[:, ids] = z.to(self.z.dtype), h, c
        self.t[ids] += 1
        self.first[ids] = False
        if out.done_logit is not None:
            done = torch.sigmoid(out.done_logit.float()) > self.done_threshold
        else:
            done = torch.zeros(len(ids), dtype=torch.bool, device=self.device)
        if out.reward is not None:
            reward = out.reward.float()
        else:
            reward = torch.ones(len(ids), device=self.device)  # +1 per step survived
        return reward, done

    def _check_finite(self, z: Tensor, ids: Tensor) -> None:
        bad = ~torch.isfinite(z).all(dim=1)
        if bad.any():
            rows = ids[bad]
            step = int(self.t[rows].min()) + 1
            raise DreamError(
                f"dream step {step}: M produced non-finite latents (NaN or inf) in "
                f"{int(bad.sum())} of {len(ids)} dreams (rows {rows[:8].tolist()}, temperature "
                f"{self.temperature}); M's weights or the initial latents are corrupt"
            )


@dataclass
class DreamRollouts:
    """Per-dream results of :func:`drive_dreams` / :func:`run_dreams`."""

    returns: Tensor  # (N,)
    lengths: Tensor  # (N,) int64
    steps: int  # dream steps taken in all
    died: Tensor  # (N,) bool: ended by the done head, not the step limit


@torch.no_grad()
def drive_dreams(env: DreamEnv, act, episodes: Tensor | None = None) -> DreamRollouts:
    """One dream per row, each stepped until it ends; ``act(ids, obs, lengths)`` gives the
    actions ``(N, action_size)`` of the running rows ``ids`` (other rows are ignored) from
    every row's observation and the steps it has taken. Finished dreams drop out of the
    batch, so the cost follows the dreams still running.
    """
    obs = env.reset(episodes=episodes)
    n, device = env.num_envs, env.device
    running = torch.ones(n, dtype=torch.bool, device=device)
    returns = torch.zeros(n, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    died = torch.zeros(n, dtype=torch.bool, device=device)
    steps = 0
    while running.any():
        ids = torch.nonzero(running).squeeze(1)
        result = env.step(act(ids, obs, lengths), running)
        returns += result.reward
        lengths[ids] += 1
        steps += ids.numel()
        died |= result.terminated
        running &= ~(result.terminated | result.truncated)
        obs = result.obs
    return DreamRollouts(returns.cpu(), lengths.cpu(), steps, died.cpu())


def run_dreams(
    env: DreamEnv,
    params: Tensor,
    spec,
    episodes: Tensor | None = None,
) -> DreamRollouts:
    """One dream per row: row i is driven by controller parameters ``params[i]`` until it ends.

    ``params`` ``(N, spec.num_params)`` with ``N = env.num_envs``; ``episodes`` (optional,
    ``(N,)``) fixes each dream's starting episode.
    """
    from worldmodels.controller.model import controller_actions

    if params.shape != (env.num_envs, spec.num_params):
        raise ValueError(
            f"expected params ({env.num_envs}, {spec.num_params}), got {tuple(params.shape)}"
        )
    if spec.input_size != env.obs_size or spec.action_size != env.action_size:
        raise ValueError(
            f"controller (inputs {spec.input_size}, actions {spec.action_size}) does not fit the "
            f"dream (observations {env.obs_size}, actions {env.action_size})"
        )
    params = params.to(env.device, env.z.dtype)
    actions = torch.zeros(env.num_envs, env.action_size, device=env.device, dtype=env.z.dtype)

    def act(ids: Tensor, obs: Tensor, lengths: Tensor) -> Tensor:
        actions[ids] = controller_actions(params[ids], obs[ids], spec)
        return actions

    return drive_dreams(env, act, episodes)


def dream_task(
    mdrnn: MDNRNN,
    latents: InitialLatents,
    spec,
    dream,
    params: torch.Tensor,
    episodes: torch.Tensor,
    seed: int,
):
    """One batch of dreams as ``dream`` (a ``DreamConfig``) sets them: row i is driven by
    controller ``params[i]`` from the first frame of episode ``episodes[i]``, with the noise of
    ``seed``; the same rows and seed give the same dreams on any machine."""
    device = mdrnn.head.weight.device
    env = DreamEnv(
        mdrnn,
        latents,
        len(params),
        temperature=dream.temperature,
        max_steps=dream.max_steps,
        obs_mode=OBS_MODE_OF[spec.mode],
        done_threshold=dream.done_threshold,
        seed=seed,
    )
    return run_dreams(env, params.to(device), spec, episodes)
