"""A GIF of the controller acting in the dream (decoded by V) beside the same controller in the
real game, both started from the same first frame.

Left: what the agent sees in the real game (the 64x64 preprocessed frames). Right: its dream,
``z`` decoded by V at every step, starting from V's code of the same first frame, with the
controller choosing the actions in both. The shorter episode holds its last frame, greyed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.controller.model import controller_actions
from worldmodels.dream.env import OBS_MODE_OF, DreamEnv, InitialLatents
from worldmodels.memory.pictures import _save, animation_frames, strip
from worldmodels.vision.vae import frames_to_input, output_to_frames


@dataclass
class DreamGif:
    path: Path
    real_steps: int
    dream_steps: int


def real_episode(agent, seed: int, max_steps: int) -> np.ndarray:
    """The 64x64 frames the agent saw in one real episode (seed ``seed``)."""
    from worldmodels.envs import make_vec_env

    frames = []
    with make_vec_env(agent.env, num_envs=1, max_steps=max_steps, workers=0, quiet=True) as env:
        obs = env.reset(seeds=[seed])
        agent.reset(1, seeds=[seed])
        for _ in range(max_steps):
            frames.append(env.preprocess(obs)[0])
            result = env.step(agent.act(obs))
            obs = result.obs
            if result.terminated[0] or result.truncated[0]:
                break
    return np.stack(frames)


@torch.no_grad()
def dream_episode(
    agent, mdrnn, first_frame: np.ndarray, temperature: float, max_steps: int, seed: int
):
    """V's decoding of every step of a dream in ``mdrnn`` from ``first_frame`` (64x64)."""
    policy = agent.policy
    vae, spec = policy.vae, policy.spec
    mdrnn = mdrnn.to(policy.device).eval()
    mu, logvar = vae.encode(frames_to_input(first_frame[None], policy.device))
    latents = InitialLatents(mu.float(), logvar.float(), "the real first frame")
    env = DreamEnv(mdrnn, latents, 1, temperature, max_steps, OBS_MODE_OF[spec.mode], seed=seed)
    params = torch.as_tensor(agent.params, dtype=torch.float32, device=env.device)[None]
    obs = env.reset()
    frames = []
    for _ in range(max_steps):
        frames.append(output_to_frames(vae.decode(env.z))[0])
        result = env.step(controller_actions(params, obs, spec))
        obs = result.obs
        if result.terminated[0] or result.truncated[0]:
            break
    return np.stack(frames)


def _pad(frames: np.ndarray, length: int) -> np.ndarray:
    if len(frames) >= length:
        return frames
    last = (frames[-1].astype(np.float32) * 0.4 + 255 * 0.3).astype(np.uint8)  # greyed: ended
    return np.concatenate([frames, np.repeat(last[None], length - len(frames), axis=0)])


def dream_beside_real(
    agent,
    mdrnn,
    path: str | Path,
    temperature: float = 1.15,
    seed: int = 0,
    max_steps: int = 300,
    scale: int = 3,
    every: int = 2,
) -> DreamGif:
    """Write the GIF (every ``every``-th step, 25 fps) and a PNG strip beside it; returns
    where, and how long each episode ran. ``mdrnn``: the M that dreams (C trained in the
    dream reads it, or, in modes without memory, only its sampled z)."""
    real = real_episode(agent, seed, max_steps)
    dream = dream_episode(agent, mdrnn, real[0], temperature, max_steps, seed)
    length = max(len(real), len(dream))
    rows = {
        "real game": _pad(real, length)[::every],
        f"dream, tau {temperature:g}": _pad(dream, length)[::every],
    }
    frames = animation_frames(rows, scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path.with_suffix(".png"), strip(rows), "PNG")
    _save(
        path,
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=1000 // 25,
        loop=0,
    )
    return DreamGif(path, len(real), len(dream))
