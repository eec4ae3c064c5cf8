"""One person playing a run's dream (and, beside it, the real game) with the same keys.

:func:`load_play_models` loads a run folder's V, M, C and the first frames of its series store
once; each page gets its own :class:`PlaySession`: one dream (a :class:`DreamEnv` of one row,
decoded by V every step) and, optionally, one real game (the run's environment, played in this
process). The driver is the person (keys) or C; either way both M states follow the actions
taken, so C can take over, and hand back, at any step. Features the run cannot support (C
without a trained controller, the dream's reward without M's reward head, deaths without its
done head, the real game without its package) are switched off with the reason, which the
page shows.
"""

from __future__ import annotations

import base64
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldmodels.controller.model import ControllerSpec, controller_actions
from worldmodels.dream.env import DEFAULT_TEMPERATURE, DreamEnv, load_initial_latents
from worldmodels.envs import preprocess_for
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.vision.vae import ConvVAE, output_to_frames

GAMES = ("carracing", "doom")
DRIVERS = ("person", "c")
MAX_TEMPERATURE = 3.0
MAX_STEPS = {"carracing": 1000, "doom": 2100}  # each game's own episode limit
ACTION_SIZES = {"carracing": 3, "doom": 1}
KEYS = {
    "carracing": {
        "ArrowLeft": "steer left",
        "ArrowRight": "steer right",
        "ArrowUp": "gas",
        "ArrowDown": "brake",
    },
    "doom": {"ArrowLeft": "move left", "ArrowRight": "move right"},
}
BRAKE = 0.8  # gymnasium's own keyboard play brakes at 0.8 (full brake locks the wheels)
# C's input modes -> the dream's observation of the same thing
OBS_MODE = {"zh": "zh", "zch": "zch", "z": "z", "z_hidden": "z"}


def keys_to_action(env: str, keys) -> np.ndarray:
    """The action (float32, the game's size) of the arrow keys held down.

    CarRacing: left / right steer -1 / +1 (both: straight), up is full gas, down brakes at
    0.8. Doom: left -1, right +1, neither or both 0 (stay), as C's output is read.
    """
    held = set(keys)
    turn = float("ArrowRight" in held) - float("ArrowLeft" in held)
    if env == "doom":
        return np.array([turn], dtype=np.float32)
    gas = float("ArrowUp" in held)
    brake = BRAKE * float("ArrowDown" in held)
    return np.array([turn, gas, brake], dtype=np.float32)


@dataclass
class Feature:
    on: bool
    why: str = ""  # why it is off

    @classmethod
    def unless(cls, on: bool, why: str) -> Feature:
        return cls(on, "" if on else why)


@dataclass
class PlayModels:
    """What every page of one run shares (read-only)."""

    run_dir: Path
    env: str
    vae: ConvVAE
    mdrnn: MDNRNN
    latents: object  # InitialLatents of the series store's first frames
    spec: ControllerSpec
    params: np.ndarray  # C's parameters (zeros when the run has no controller)
    z_mode: str
    device: torch.device
    features: dict[str, Feature] = field(default_factory=dict)

    def info(self) -> dict:
        """What the page needs to know before its first frame."""
        return {
            "run": str(self.run_dir),
            "env": self.env,
            "keys": KEYS[self.env],
            "temperature": DEFAULT_TEMPERATURE,
            "max_temperature": MAX_TEMPERATURE,
            "max_steps": MAX_STEPS[self.env],
            "episodes": len(self.latents.mu),
            "features": {k: {"on": f.on, "why": f.why} for k, f in self.features.items()},
        }


def kept_agent(run_dir: Path) -> tuple[Path, Path]:
    """(the run folder whose V, M and series store the agent uses, the folder of its C). Where
    the run kept another agent (``agent_from`` in its controller.json): an earlier round's, or
    its refined C in ``RUN/refine`` on the V and M it was refined on (a pipeline run's layout,
    ``FOLDER/vae/vae.pt``); else ``run_dir`` for both."""
    from worldmodels.agent import agent_source, checkpoint_paths, find_controller_dir

    try:
        folder, info = agent_source(run_dir)
        if folder == find_controller_dir(run_dir):  # its own agent
            return run_dir, run_dir
        vae = checkpoint_paths(folder, info)[0]
    except (FileNotFoundError, ValueError, KeyError):  # load_controller says what is wrong
        return run_dir, run_dir
    return Path(os.path.normpath(vae.parent.parent)), folder


def run_game(run_dir: Path) -> str | None:
    """The game a run folder was made for (its config.json, else its controller.json)."""
    from worldmodels.utils.io import read_json

    for path, key in (
        (run_dir / "config.json", "collect"),
        (run_dir / "controller" / "controller.json", None),
    ):
        if path.exists():
            data = read_json(path, "run description")
            if isinstance(data, dict):
                section = data.get(key) if key else data
                if isinstance(section, dict) and section.get("env") in GAMES:
                    return section["env"]
    return None


def load_play_models(
    run_dir: str | Path,
    device: str = "cpu",
    env: str | None = None,
    real: bool = True,
) -> PlayModels:
    """V, M, the series store's first frames and (when trained) C of a run folder's agent: of
    the round whose agent it kept, and its refined C (``agent_from``, :func:`kept_agent`).

    Missing or corrupt V, M or series store: an error naming the file. A missing or unfit
    controller only switches C's takeover off (with the reason); so do M's absent heads.
    """
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.pipeline import RunPaths
    from worldmodels.utils.device import pick_device
    from worldmodels.vision.train import load_vae

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    run_dir, controller_dir = kept_agent(run_dir)
    env = env or run_game(run_dir)
    if env not in GAMES:
        raise ValueError(
            f"{run_dir}: cannot tell which game the run plays (no config.json naming it); "
            f"pass --env ({' or '.join(GAMES)})"
        )
    paths = RunPaths(run_dir)
    dev = pick_device(device)
    vae = load_vae(paths.vae, dev)
    mdrnn = load_mdrnn(paths.mdrnn, dev, z_size=vae.z_size)
    if mdrnn.action_size != ACTION_SIZES[env]:
        raise ValueError(
            f"{paths.mdrnn}: M takes {mdrnn.action_size} action values; {env} has "
            f"{ACTION_SIZES[env]}"
        )
    if not paths.series.exists():
        raise FileNotFoundError(
            f"series store not found: {paths.series} (the dream starts from its first frames; "
            "make it with worldmodels encode)"
        )
    latents = load_initial_latents(paths.series, vae.z_size, mdrnn.action_size)
    spec, params, z_mode, controller = load_controller(controller_dir, vae, mdrnn, env)
    features = {
        "controller": controller,
        "reward": Feature.unless(
            mdrnn.reward_head, "M has no reward head (train M with mdrnn.reward_head=true)"
        ),
        "death": Feature.unless(
            mdrnn.done_head, "M has no done head: its dreams end only at the step limit"
        ),
        "real": real_game_feature(env, real),
    }
    return PlayModels(run_dir, env, vae, mdrnn, latents, spec, params, z_mode, dev, features)


def load_controller(run_dir: Path, vae: ConvVAE, mdrnn: MDNRNN, env: str):
    """(spec, params, z_mode, Feature): the run's C, or a zero C and the reason there is none."""
    from worldmodels.agent import find_controller_dir, load_params
    from worldmodels.controller.policy import check_fits
    from worldmodels.controller.train import BEST, read_controller_json

    if env == "doom":
        fallback = ControllerSpec.doom(vae.z_size, mdrnn.hidden_size)
    else:
        fallback = ControllerSpec(vae.z_size, mdrnn.hidden_size, mode="zh")
    try:
        folder = find_controller_dir(run_dir)
        info = read_controller_json(folder)
        spec = ControllerSpec(**info["spec"])
        check_fits(spec, vae, mdrnn)
        if not (folder / BEST).exists():
            raise FileNotFoundError(f"no {BEST} in {folder} yet (training has not finished)")
        params = load_params(folder / BEST, spec)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as e:
        return fallback, np.zeros(fallback.num_params), "sample", Feature(False, str(e))
    return spec, params, info.get("z_mode", "sample"), Feature(True)


def real_game_feature(env: str, wanted: bool) -> Feature:
    if not wanted:
        return Feature(False, "turned off (--no-real)")
    if env == "doom":
        from worldmodels.envs.doom import vizdoom_available

        if not vizdoom_available():
            return Feature(False, "ViZDoom is not installed (pip install 'worldmodels[doom]')")
    return Feature(True)


def encode_frame(frame: np.ndarray) -> dict:
    """A uint8 (H, W, 3) frame as the page draws it: base64 of the raw RGB bytes."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    return {
        "width": int(frame.shape[1]),
        "height": int(frame.shape[0]),
        "rgb": base64.b64encode(frame.tobytes()).decode("ascii"),
    }


@dataclass
class Side:
    """One of the two views (dream or game): its episode's progress and latest frame."""

    frame: np.ndarray | None = None
    steps: int = 0
    total: float = 0.0
    reward: float = 0.0
    over: bool = False
    died: bool = False
    action: list[float] = field(default_factory=list)
    ms: float = 0.0

    def restart(self, frame: np.ndarray) -> None:
        self.frame, self.steps, self.total, self.reward = frame, 0, 0.0, 0.0
        self.over = self.died = False
        self.action = []

    def record(self, frame, reward: float, action, ended: bool, died: bool, ms: float) -> None:
        self.frame = frame
        self.steps += 1
        self.reward = float(reward)
        self.total += float(reward)
        self.action = [round(float(a), 4) for a in np.ravel(action)]
        self.over, self.died, self.ms = bool(ended), bool(died), ms

    def state(self) -> dict:
        return {
            "frame": encode_frame(self.frame),
            "steps": self.steps,
            "reward": round(self.reward, 4),
            "return": round(self.total, 3),
            "over": self.over,
            "died": self.died,
            "action": self.action,
            "ms": round(self.ms, 2),
        }


class PlaySession:
    """A dream (and a real game) driven by a person's keys or by C, one step per call."""

    def __init__(self, models: PlayModels, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE):
        self.models = models
        self.env = models.env
        self.seed = seed
        self.episode = 0
        self.driver = "person"
        spec = models.spec
        self.dream = DreamEnv(
            models.mdrnn,
            models.latents,
            num_envs=1,
            temperature=DEFAULT_TEMPERATURE,
            max_steps=MAX_STEPS[self.env],
            obs_mode=OBS_MODE[spec.mode],
            seed=seed,
        )
        self.set_temperature(temperature)
        self.params = torch.as_tensor(models.params, dtype=torch.float32, device=models.device)
        self.params = self.params.unsqueeze(0)
        self.dream_side = Side()
        self.real_side: Side | None = None
        self.game = None
        self.policy = None
        self.last_raw: np.ndarray | None = None  # the game's latest raw frame (C's input)
        if models.features["real"].on:
            self._open_game()
        self.reset()

    def _open_game(self) -> None:
        from worldmodels.controller.policy import WorldModelPolicy
        from worldmodels.envs import make_vec_env

        m = self.models
        self.game = make_vec_env(
            self.env, "gymnasium", num_envs=1, max_steps=MAX_STEPS[self.env], workers=0, quiet=True
        )
        self.policy = WorldModelPolicy(
            m.vae,
            m.mdrnn if m.spec.uses_memory else None,
            m.spec,
            m.device,
            z_mode=m.z_mode,
            preprocess=preprocess_for(self.env),
        )
        self.policy.reset(1)
        self.real_side = Side()

    # ---------------------------------------------------------------- control
    def set_temperature(self, value: float) -> None:
        value = float(value)
        if not (math.isfinite(value) and 0 < value <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be in (0, {MAX_TEMPERATURE}], got {value}")
        self.dream.temperature = value

    def set_driver(self, driver: str) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"driver must be one of {DRIVERS}, got {driver!r}")
        controller = self.models.features["controller"]
        if driver == "c" and not controller.on:
            raise ValueError(f"C cannot drive: {controller.why}")
        self.driver = driver

    def reset(self, episode: int | None = None) -> dict:
        """New dream (from stored episode ``episode``'s first frame, else a random one) and game."""
        count = len(self.models.latents.mu)
        if episode is not None and not 0 <= episode < count:
            raise ValueError(f"episode must be in 0..{count - 1}, got {episode}")
        self.dream.reset(episodes=None if episode is None else torch.tensor([episode]))
        self.dream_side.restart(self._decode())
        if self.game is not None:
            seed = self.seed + self.episode
            frames = self.game.reset(seeds=[seed])
            self.policy.start(np.array([0]), [seed])
            self.real_side.restart(self._show(frames[0]))
            self.last_raw = frames
        self.episode += 1
        return self.state()

    # ------------------------------------------------------------------- step
    def step(self, keys=()) -> dict:
        """One step of both views with the held ``keys`` (ignored while C drives)."""
        person = keys_to_action(self.env, keys)
        if not self.dream_side.over:
            self._step_dream(person)
        if self.game is not None and not self.real_side.over:
            self._step_game(person)
        return self.state()

    @torch.inference_mode()
    def _step_dream(self, person: np.ndarray) -> None:
        start = time.perf_counter()
        if self.driver == "c":
            action = controller_actions(self.params, self.dream.observe(), self.models.spec)
        else:
            action = torch.as_tensor(person).unsqueeze(0)
        out = self.dream.step(action)
        ended = bool(out.terminated[0] or out.truncated[0])
        frame = self._decode()
        ms = (time.perf_counter() - start) * 1e3
        self.dream_side.record(
            frame, out.reward[0], action[0].cpu().numpy(), ended, out.terminated[0], ms
        )

    def _step_game(self, person: np.ndarray) -> None:
        start = time.perf_counter()
        taken = None if self.driver == "c" else person[None]
        action, _ = self.policy.act(self.last_raw, np.array([0]), self.params, taken=taken)
        out = self.game.step(action)
        self.last_raw = out.obs
        ended = bool(out.terminated[0] or out.truncated[0])
        ms = (time.perf_counter() - start) * 1e3
        died = bool(out.terminated[0]) if self.env == "doom" else False
        self.real_side.record(self._show(out.obs[0]), out.reward[0], action[0], ended, died, ms)

    def _decode(self) -> np.ndarray:
        with torch.inference_mode():
            return output_to_frames(self.models.vae.decode(self.dream.z))[0]

    def _show(self, raw: np.ndarray) -> np.ndarray:
        """The game's frame as shown: CarRacing's 96 x 96 whole; Doom's screen at half size."""
        return raw[::2, ::2] if self.env == "doom" else raw

    def state(self) -> dict:
        return {
            "type": "frame",
            "driver": self.driver,
            "temperature": self.dream.temperature,
            "dream": self.dream_side.state(),
            "real": self.real_side.state() if self.real_side is not None else None,
        }

    def close(self) -> None:
        if self.game is not None:
            self.game.close()
            self.game = None
