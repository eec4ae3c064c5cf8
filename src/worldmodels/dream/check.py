"""Is the dream as hard as the game? Replay the data's own actions in M and compare.

A controller evolved in the dream learns whatever the dream rewards. If M rarely dreams a
death (or dreams rewards the game never pays), C learns to exploit M, not to play: the Doom
laptop run's first M let random play survive 2,030 of 2,100 dream steps against ~300 in the
game, and every C it produced turned left forever. This check costs seconds and catches that
before CMA-ES spends its hours: each of up to ``episodes`` real episodes of the series store
is re-dreamt from its own first frame with its own recorded actions (cycled if the dream
outlives the episode), at the dream's temperature, and the dream's lengths, returns and
deaths are set beside the real ones. With a reward head the returns matter as much: the
CarRacing laptop M pays the data's brownian driving -15 a dream against -56 +- 20 in the game,
and C evolved in that dream drives in circles in the game.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import DreamConfig
from worldmodels.dream.env import DreamEnv, drive_dreams, load_initial_latents
from worldmodels.memory.mdrnn import MDNRNN

CHECK_JSON = "dream_check.json"
TOO_FAR = 1.5  # dream / real mean length beyond this factor (either way): warn
# and warn when the mean returns differ by more than the real returns' standard deviation


@dataclass
class DreamCheck:
    """Mean length, return and death rate of the same episodes, real and dreamt."""

    episodes: int
    temperature: float
    real_length: float
    dream_length: float
    real_return: float
    dream_return: float
    real_return_std: float  # spread of the real episodes' returns
    real_deaths: float  # fraction of episodes that ended terminated
    dream_deaths: float  # fraction of dreams ended by the done head

    @property
    def length_ratio(self) -> float:
        return self.dream_length / max(self.real_length, 1e-9)

    def warning(self) -> str | None:
        """A sentence when the dream lasts far longer (or shorter) than the game, or pays
        returns further from the game's than the game's own spread; else None."""
        problems = []
        if not 1 / TOO_FAR <= self.length_ratio <= TOO_FAR:
            longer = "longer" if self.length_ratio > 1 else "shorter"
            problems.append(
                f"the data's own actions last {self.length_ratio:.1f}x {longer} in the dream "
                "than in the game"
            )
        gap = self.dream_return - self.real_return
        if abs(gap) > max(self.real_return_std, 1e-9):
            problems.append(
                f"the dream pays them {gap:+.1f} against the game (more than the game's spread, "
                f"{self.real_return_std:.1f})"
            )
        if not problems:
            return None
        return (
            f"{'; '.join(problems)}: C may learn to exploit M rather than to play (train M "
            "longer or on more data, or change the temperature)"
        )

    def line(self) -> str:
        text = (
            f"data's actions replayed in the dream (tau {self.temperature}, {self.episodes} "
            f"episodes): {self.dream_length:.0f} steps (real {self.real_length:.0f}), return "
            f"{self.dream_return:.1f} (real {self.real_return:.1f} +- {self.real_return_std:.1f}), "
            f"deaths {self.dream_deaths:.0%} (real {self.real_deaths:.0%})"
        )
        warning = self.warning()
        return text if warning is None else f"{text}; WARNING: {warning}"

    def to_dict(self) -> dict:
        return {**asdict(self), "length_ratio": self.length_ratio, "warning": self.warning()}


def evenly_spaced(count: int, wanted: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).round().astype(np.int64))


@torch.no_grad()
def replay_in_dream(
    mdrnn: MDNRNN,
    series_path: str | Path,
    dream: DreamConfig,
    episodes: int = 200,
    seed: int = 0,
) -> DreamCheck:
    """Up to ``episodes`` real episodes (evenly spaced in the store), dreamt with their actions."""
    from worldmodels.memory.data import open_series

    info = open_series(series_path, mdrnn.z_size, mdrnn.action_size)
    latents = load_initial_latents(series_path, mdrnn.z_size, mdrnn.action_size)
    picked = evenly_spaced(len(info.store), episodes)
    actions, real_lengths, real_returns, real_deaths = [], [], [], []
    for i in picked:
        ep = info.store[int(i)]
        actions.append(torch.from_numpy(np.array(ep["actions"], np.float32)))
        real_lengths.append(len(actions[-1]))
        real_returns.append(float(np.asarray(ep["rewards"], np.float64).sum()))
        real_deaths.append(bool(np.asarray(ep["terminated"]).any()))
    n = len(picked)
    env = DreamEnv(
        mdrnn,
        latents,
        n,
        temperature=dream.temperature,
        max_steps=dream.max_steps,
        obs_mode="z",
        done_threshold=dream.done_threshold,
        seed=seed,
    )
    padded = torch.nn.utils.rnn.pad_sequence(actions, batch_first=True).to(env.device)
    real = torch.as_tensor(real_lengths, device=env.device)
    rows = torch.arange(n, device=env.device)
    dreams = drive_dreams(
        env,
        lambda ids, obs, taken: padded[rows, taken % real],  # the episode's actions, cycled
        torch.as_tensor(picked),
    )
    return DreamCheck(
        episodes=n,
        temperature=dream.temperature,
        real_length=float(np.mean(real_lengths)),
        dream_length=float(dreams.lengths.double().mean()),
        real_return=float(np.mean(real_returns)),
        dream_return=float(dreams.returns.double().mean()),
        real_return_std=float(np.std(real_returns)),
        real_deaths=float(np.mean(real_deaths)),
        dream_deaths=float(dreams.died.double().mean()),
    )
