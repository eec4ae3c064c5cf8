"""Doom TakeCover (ViZDoom's ``VizdoomTakeCover-v1``) as a batch, with VecCarRacing's contract.

The agent stands at the far end of a room while monsters throw fireballs; it can only move
left or right. The reward is +1 per tic survived (so a return is the survival time in steps);
an episode ends at death or, as in the paper, after ``max_steps`` = 2,100 steps (truncated).

Same contract as :class:`~worldmodels.envs.carracing.VecCarRacing`: ``reset(mask, seeds)``
returns every slot's frame, ``step(actions, active)`` returns a :class:`StepResult`, and no
slot ever resets itself. Environments live in forked worker processes (one per core by
default); a worker that raises or dies stops the caller with its traceback.

Actions: C's single tanh output per slot, ``(N,)`` or ``(N, k)`` (column 0 is read: the
rollout engine's action buffer is three wide), mapped the paper's way: ``< -1/3`` left,
``> 1/3`` right, otherwise stay. Frames: the raw ``(240, 320, 3)`` screen (ViZDoom's
scenario default; the paper rendered 480x640); :func:`preprocess_doom_frames` keeps the top
5/6 of the rows (the paper's rows 0:400 of 480) and resizes to 64x64.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from worldmodels.controller.model import doom_direction
from worldmodels.envs.carracing import StepResult
from worldmodels.envs.preprocess import preprocess_frames
from worldmodels.envs.workers import EnvWorkers

ENV_ID = "VizdoomTakeCover-v1"
OBS_SHAPE = (240, 320, 3)
DEFAULT_MAX_STEPS = 2100  # the paper's episode limit
CROP_FRACTION = 400 / 480  # the paper kept rows 0:400 of its 480-row frames
INSTALL = 'pip install -e ".[doom]"'


class VizdoomMissingError(ValueError):
    """vizdoom is not installed (a ValueError: the CLI prints it as one line, exit 2)."""


def vizdoom_available() -> bool:
    return importlib.util.find_spec("vizdoom") is not None


def require_vizdoom() -> None:
    if not vizdoom_available():
        raise VizdoomMissingError(
            f"Doom TakeCover needs the vizdoom package, which is not installed: {INSTALL} "
            "(or `pip install vizdoom`; it ships the engine and the Freedoom data)"
        )


def preprocess_doom_frames(frames: np.ndarray) -> np.ndarray:
    """Top 5/6 of the rows (the paper's 0:400 of 480), resized to uint8 (B, 64, 64, 3)."""
    frames = np.asarray(frames)
    rows = frames.shape[-3] if frames.ndim >= 3 else 0
    return preprocess_frames(frames, crop_rows=round(rows * CROP_FRACTION))


class _Game:
    """One TakeCover game; ``buttons[direction + 1]`` is the wrapper's action that presses
    MOVE_LEFT alone (direction -1), nothing (0) or MOVE_RIGHT alone (+1)."""

    def __init__(self, max_steps: int):
        import gymnasium as gym
        import vizdoom.gymnasium_wrapper  # noqa: F401  (registers the Vizdoom* ids)

        self.env = gym.make(ENV_ID, max_episode_steps=max_steps)
        self.buttons = np.array(direction_actions(self.env.unwrapped), np.int64)

    def close(self) -> None:
        self.env.close()


def direction_actions(wrapper) -> list[int]:
    """The wrapper's discrete actions for directions -1, 0, +1 (left, stay, right), found by
    the buttons' names: the order of ``button_map`` and of the buttons is the scenario's."""
    names = [b.name for b in wrapper.game.get_available_buttons()]
    table = [tuple(int(v) for v in combo) for combo in wrapper.button_map]

    def pressing(*pressed: str) -> int:
        combo = tuple(int(name in pressed) for name in names)
        if combo not in table:
            raise RuntimeError(f"ViZDoom offers no action pressing {pressed or 'nothing'}: {table}")
        return table.index(combo)

    return [pressing("MOVE_LEFT"), pressing(), pressing("MOVE_RIGHT")]


def _play(game: _Game, cmd: str, arg):
    if cmd == "reset":
        return game.env.reset(seed=arg)[0]["screen"]
    obs, reward, terminated, truncated, _ = game.env.step(int(game.buttons[arg + 1]))
    return obs["screen"], float(reward), bool(terminated), bool(truncated)


class VecDoom:
    """``num_envs`` Doom TakeCover games stepped as one batch (ViZDoom's gymnasium wrapper).

    Environment i lives in worker ``i % workers``; ``workers=0`` runs them in this process.
    Episode seeds are honoured: the same seed and actions replay the same episode.
    """

    backend = "gymnasium"  # ViZDoom's gymnasium wrapper: per-episode seeds are honoured
    env = "doom"

    def __init__(
        self, num_envs: int = 1, max_steps: int = DEFAULT_MAX_STEPS, workers: int | None = None
    ):
        require_vizdoom()
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.num_envs = num_envs
        self.max_steps = max_steps
        self._obs = np.zeros((num_envs, *OBS_SHAPE), dtype=np.uint8)
        # each game's engine makes ./_vizdoom at start unless it exists; two games starting
        # at once in a folder without it race, and the loser dies (SIGSEGV, seen on collect)
        os.makedirs("_vizdoom", exist_ok=True)
        self._pool = EnvWorkers("ViZDoom", _Game, _play, num_envs, max_steps, workers)
        self.workers = self._pool.workers

    @staticmethod
    def preprocess(frames: np.ndarray) -> np.ndarray:
        """Raw screens -> the 64x64 frames V sees (see :func:`preprocess_doom_frames`)."""
        return preprocess_doom_frames(frames)

    # ------------------------------------------------------------- contract
    def reset(self, mask: np.ndarray | None = None, seeds: list[int | None] | None = None):
        """Reset the games where ``mask`` is true (all when None); returns every frame."""
        mask = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        ids = np.flatnonzero(mask)
        if ids.size:
            items = {
                int(i): None if seeds is None or seeds[i] is None else int(seeds[i]) for i in ids
            }
            out = self._pool.run("reset", items)
            self._obs[ids] = np.stack([out[int(i)] for i in ids])
        return self._obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step the ``active`` games with C's outputs ``actions`` (N,) or (N, k), column 0 read."""
        self.step_async(actions, active)
        return self.step_wait()

    def step_async(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Start a step; the games run in their workers until ``step_wait``."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim not in (1, 2) or actions.shape[0] != self.num_envs:
            raise ValueError(
                f"expected actions of shape ({self.num_envs},) or ({self.num_envs}, k), "
                f"got {actions.shape}"
            )
        direction = doom_direction(actions)
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, bool)
        ids = np.flatnonzero(active)
        sent = (
            self._pool.send("step", {int(i): int(direction[i]) for i in ids}) if ids.size else None
        )
        self._in_flight = (ids, sent)

    def step_wait(self) -> StepResult:
        (ids, sent), self._in_flight = self._in_flight, None
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        if ids.size:
            out = self._pool.receive(sent)
            obs, r, te, tr = zip(*(out[int(i)] for i in ids), strict=True)
            self._obs[ids] = np.stack(obs)
            reward[ids], terminated[ids], truncated[ids] = r, te, tr
        return StepResult(self._obs.copy(), reward, terminated, truncated)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
