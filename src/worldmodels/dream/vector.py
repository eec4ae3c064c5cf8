"""The dream behind gymnasium's vector API, for users' own agents and libraries.

    env = DreamVectorEnv(load_mdrnn("runs/doom/mdrnn/mdrnn.pt"),
                         load_initial_latents("runs/doom/series"), num_envs=1024)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions)  # numpy in, numpy out

A thin adapter over :class:`~worldmodels.dream.env.DreamEnv`: numpy arrays at the boundary,
the batch stays on M's device in between. It resets finished dreams itself, gymnasium's
default way (``AutoresetMode.NEXT_STEP``): the step after a dream ends resets it, ignoring its
action, with reward 0. Training in this package does not go through here (the CMA-ES loop
uses ``DreamEnv`` directly, with no copies to numpy).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldmodels.dream.env import DreamEnv, InitialLatents
from worldmodels.memory.mdrnn import MDNRNN


class DreamVectorEnv(VectorEnv):
    """``num_envs`` dreams as a gymnasium ``VectorEnv`` (keyword arguments: ``DreamEnv``'s)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, mdrnn: MDNRNN, latents: InitialLatents, num_envs: int, **dream_kwargs):
        self.dream = DreamEnv(mdrnn, latents, num_envs, **dream_kwargs)
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(
            -np.inf, np.inf, (self.dream.obs_size,), np.float32
        )
        self.single_action_space = spaces.Box(-1.0, 1.0, (self.dream.action_size,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, bool)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.dream.seed(int(seed if np.isscalar(seed) else seed[0]))
        self._autoreset[:] = False
        return _np(self.dream.reset()), {}

    def step(self, actions):
        actions = torch.as_tensor(np.asarray(actions, np.float32))
        actions = actions.reshape(self.num_envs, self.dream.action_size)
        resetting = self._autoreset.copy()
        out = self.dream.step(actions, active=~resetting)
        obs = self.dream.reset(mask=resetting) if resetting.any() else out.obs
        terminated, truncated = _np(out.terminated), _np(out.truncated)
        self._autoreset = terminated | truncated
        return _np(obs), _np(out.reward), terminated, truncated, {}


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
