"""Score an agent in its real game (gymnasium ``CarRacing-v3``, or ViZDoom TakeCover for a
Doom agent): full episodes, explicit seeds, no shortcuts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodels.agent import Agent
from worldmodels.envs import DEFAULT_MAX_STEPS, env_id_for, make_vec_env, resolve_backend
from worldmodels.execution import rollout_engine
from worldmodels.utils.io import atomic_write_bytes, atomic_write_json


@dataclass
class EvalResult:
    returns: np.ndarray
    seeds: list[int]
    backend: str
    seconds: float
    env: str = "carracing"

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())

    def line(self) -> str:
        game = "" if self.env == "carracing" else f"{self.env}, "
        return (
            f"{self.mean:.1f} +- {self.std:.1f} over {len(self.returns)} episodes "
            f"({game}{self.backend}, seeds {self.seeds[0]}..{self.seeds[-1]}, {self.seconds:.0f} s)"
        )

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "episodes": len(self.returns),
            "backend": self.backend,
            "env": self.env,
            "env_id": env_id_for(self.env),
            "seconds": self.seconds,
            "returns": [float(r) for r in self.returns],
            "seeds": self.seeds,
        }


def evaluate_agent(
    agent: Agent,
    episodes: int = 100,
    seed: int = 0,
    num_envs: int = 8,
    backend: str = "gymnasium",
    workers: int | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: bool = True,
    env: str | None = None,
    cluster=None,
    groups: int = 2,
) -> EvalResult:
    """Episode i is played on seed ``seed + i``, to the end (no early stop).

    ``env``: the game (default: the agent's own, ``agent.env``). ``cluster`` (a
    ``distributed.cluster.RaySettings``): the episodes are shared out among Ray workers, each
    with its own copy of the agent's V and M (an agent from ``Agent.load``); the returns are
    the same as here, episode for episode. ``groups``: the environments in that many batches
    stepped in turn (``EvalConfig.env_groups``); the returns do not depend on it.
    """
    env_name = agent.env if env is None else env
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    seeds = [seed + i for i in range(episodes)]
    backend = resolve_backend(backend, quiet=True, env=env_name)
    start = time.perf_counter()
    bar = tqdm(total=episodes, desc="evaluate", unit="ep", disable=not progress)
    done: list[float] = []

    def on_episode(job: int, ret: float) -> None:
        done.append(ret)
        bar.update(1)
        bar.set_postfix(mean=f"{np.mean(done):.1f}")

    engine = rollout_engine(
        agent.policy,
        env=env_name,
        backend=backend,
        num_envs=min(num_envs, episodes),
        max_steps=max_steps,
        seed=seed,
        workers=workers,
        groups=groups,
        cluster=cluster,
        vae_path=agent.vae_path,
        mdrnn_path=agent.mdrnn_path,
    )
    try:
        result = engine.run(agent.params[None], [(0, s) for s in seeds], on_episode=on_episode)
    finally:
        engine.close()
        bar.close()
    seconds = time.perf_counter() - start
    return EvalResult(result.returns, seeds, backend, seconds, env_name)


def save_eval(result: EvalResult, path: str | Path, run_dir: str | Path) -> None:
    atomic_write_json(path, {"run_dir": str(run_dir), **result.to_dict()})


VIDEO_SUFFIXES = (".gif", ".mp4")


def check_video(agent: Agent, path: str | Path) -> None:
    """ValueError, before anything is played, for a video ``record_video`` cannot write."""
    if agent.env != "carracing":
        raise ValueError(
            f"--video records CarRacing episodes; this agent plays {agent.env!r} "
            "(see worldmodels.dream.pictures for the dream beside the real game)"
        )
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--video {path}: the file name must end in .gif or .mp4")


def record_video(
    agent: Agent,
    path: str | Path,
    seed: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    scale: int = 3,
) -> float:
    """An episode as GIF/MP4: the road, the agent's 64x64 view and V's reconstruction of z."""
    check_video(agent, path)
    import imageio.v3 as iio
    import torch

    from worldmodels.envs.preprocess import preprocess_frames
    from worldmodels.vision.vae import output_to_frames

    frames, total = [], 0.0
    with make_vec_env(backend="gymnasium", num_envs=1, max_steps=max_steps, workers=0) as env:
        obs = env.reset(seeds=[seed])
        agent.reset(1, seeds=[seed])
        for _ in range(max_steps):
            action = agent.act(obs)
            with torch.inference_mode():
                recon = output_to_frames(agent.policy.vae.decode(agent.last_z))[0]
            frames.append(_compose(obs[0], preprocess_frames(obs[0]), recon, scale))
            result = env.step(action)
            obs, total = result.obs, total + float(result.reward[0])
            if result.terminated[0] or result.truncated[0]:
                break
    if Path(path).suffix.lower() == ".gif":  # every other frame, 25 a second
        video = iio.imwrite("<bytes>", frames[::2], extension=".gif", duration=40, loop=0)
    else:  # H.264 through imageio-ffmpeg's own ffmpeg
        video = iio.imwrite("<bytes>", frames, extension=".mp4", fps=50, macro_block_size=16)
    atomic_write_bytes(path, video)
    return total


def _compose(road: np.ndarray, view: np.ndarray, recon: np.ndarray, scale: int) -> np.ndarray:
    """[road 96x96 | agent's view 64x64 | reconstruction 64x64], upscaled, on one strip."""

    def up(img, k):
        return np.repeat(np.repeat(img, k, axis=0), k, axis=1)

    h = 96 * scale
    big_road = up(road, scale)
    k = h // 64
    pad = np.zeros((h - 64 * k, 64 * k, 3), np.uint8)
    side = [np.concatenate([up(img, k), pad]) for img in (view, recon)]
    return np.concatenate([big_road, *side], axis=1)
