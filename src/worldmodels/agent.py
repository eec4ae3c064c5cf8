"""The trained agent as users call it: ``Agent.load(run_dir)``, ``reset``, ``act``.

    agent = worldmodels.Agent.load("runs/laptop")
    agent.reset(batch_size=8)
    actions = agent.act(frames)  # frames: uint8 (8, 96, 96, 3) raw CarRacing observations

``act`` preprocesses, encodes (V), applies C to [z, h] and steps M's LSTM, for the whole batch
in one call; the actions are float32 (B, 3), ready for ``env.step``. A Doom agent (trained in
the dream) takes raw (B, 240, 320, 3) screens and gives (B, 1) tanh outputs, which
``VecDoom.step`` maps to left / stay / right; ``agent.env`` says which game it plays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from worldmodels.controller.model import ControllerSpec, check_params
from worldmodels.controller.policy import WorldModelPolicy
from worldmodels.envs import preprocess_for
from worldmodels.utils.device import pick_device
from worldmodels.utils.io import file_digest_of


def find_controller_dir(run_dir: str | Path) -> Path:
    """The folder holding controller.json: ``run_dir/controller`` or ``run_dir`` itself."""
    from worldmodels.controller.train import CONTROLLER_JSON

    run_dir = Path(run_dir)
    for folder in (run_dir / "controller", run_dir):
        if (folder / CONTROLLER_JSON).exists():
            return folder
    raise FileNotFoundError(
        f"{run_dir}: no trained controller found (expected "
        f"{run_dir / 'controller' / CONTROLLER_JSON} from `worldmodels train-controller` "
        "or `worldmodels pipeline`)"
    )


def kept_run(folder: Path, info: dict) -> Path | None:
    """The run folder whose agent is the ``best`` agent of the controller folder ``folder``
    (controller.json ``info``): the one its ``agent_from`` names (an iterated run that kept an
    earlier round's agent, ``iterate.keep_best_round``), or None for its own."""
    if not info.get("agent_from"):
        return None
    return Path(os.path.normpath(folder / info.get("relative_to", "..") / info["agent_from"]))


def agent_source(run_dir: str | Path, which: str = "best") -> tuple[Path, dict]:
    """The controller folder a run's agent comes from and its controller.json: for ``best``,
    the run :func:`kept_run` names, if any; ``latest`` is always the folder's own CMA-ES mean."""
    from worldmodels.controller.train import read_controller_json

    folder = find_controller_dir(run_dir)
    info = read_controller_json(folder)
    other = kept_run(folder, info) if which == "best" else None
    if other is not None:
        folder = find_controller_dir(other)
        info = read_controller_json(folder)
        if info.get("agent_from"):
            raise ValueError(f"{folder}: agent_from leads to another ({info['agent_from']})")
    return folder, info


def checkpoint_paths(
    folder: Path, info: dict, which: str = "best"
) -> tuple[Path, Path | None, Path]:
    """V's, M's (None when C does not read M) and C's files of the controller folder ``folder``
    whose controller.json holds ``info`` (as :func:`agent_source` gives them)."""
    from worldmodels.controller.train import BEST, LATEST

    base = folder / info.get("relative_to", "..")
    uses_memory = ControllerSpec(**info["spec"]).uses_memory
    return (
        base / info["vae"],
        base / info["mdrnn"] if uses_memory else None,
        folder / (BEST if which == "best" else LATEST),
    )


def agent_digest(run_dir: str | Path, which: str = "best") -> str:
    """A digest of the files a run's agent is loaded from (V, M, C): another agent saved in the
    same folder (C trained again, say) has another digest."""
    folder, info = agent_source(run_dir, which)
    paths = checkpoint_paths(folder, info, which)
    return file_digest_of([p for p in paths if p is not None])


def load_params(path: Path, spec: ControllerSpec) -> np.ndarray:
    """C's parameters saved at ``path`` (best.npy / latest.npy), checked against ``spec``."""
    if not path.exists():
        raise FileNotFoundError(f"controller parameters not found: {path}")
    try:
        params = np.load(path)
    except Exception as e:
        raise ValueError(f"controller parameters {path} are corrupt: {e}") from None
    return check_params(params, spec, source=str(path))


class Agent:
    def __init__(
        self,
        policy: WorldModelPolicy,
        params: np.ndarray,
        env: str = "carracing",
        vae_path: Path | None = None,
        mdrnn_path: Path | None = None,
    ):
        self.policy = policy
        self.env = env
        self.spec = policy.spec
        self.params = check_params(params, self.spec)
        self._params_t = torch.as_tensor(self.params, dtype=torch.float32, device=policy.device)
        self.batch_size = 0
        self.last_z: torch.Tensor | None = None
        # the checkpoints it was loaded from (Agent.load): Ray workers load their own copies
        self.vae_path, self.mdrnn_path = vae_path, mdrnn_path

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", which: str = "best") -> Agent:
        """Load V, M and C of a run folder; ``which`` is ``best`` or ``latest`` parameters."""
        from worldmodels.memory.train import load_mdrnn
        from worldmodels.vision.train import load_vae

        if which not in ("best", "latest"):
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        folder, info = agent_source(run_dir, which)
        spec = ControllerSpec(**info["spec"])
        dev = pick_device(device)
        vae_path, mdrnn_path, params_path = checkpoint_paths(folder, info, which)
        vae = load_vae(vae_path, dev)
        mdrnn = load_mdrnn(mdrnn_path, dev) if mdrnn_path is not None else None
        params = load_params(params_path, spec)
        env = info.get("env", "carracing")
        policy = WorldModelPolicy(
            vae,
            mdrnn,
            spec,
            dev,
            z_mode=info.get("z_mode", "sample"),
            preprocess=preprocess_for(env),
        )
        return cls(policy, params, env, vae_path, mdrnn_path)

    def reset(self, batch_size: int = 1, seeds: list[int | None] | None = None) -> None:
        """Start ``batch_size`` new episodes; ``seeds`` seed each one's z-sampling noise."""
        self.batch_size = batch_size
        self.policy.reset(batch_size)
        self.policy.start(np.arange(batch_size), seeds or [None] * batch_size)

    def act(
        self,
        frames: np.ndarray,
        slots: np.ndarray | None = None,
        offset: np.ndarray | None = None,
    ) -> np.ndarray:
        """Actions for ``frames``, one per episode of the batch (or per episode in ``slots``,
        the ones still running); ``offset``: noise added to them, kept in the action box."""
        frames = np.asarray(frames)
        slots = np.arange(self.batch_size) if slots is None else np.asarray(slots)
        if frames.ndim != 4 or frames.shape[0] != len(slots):
            h, w = (240, 320) if self.env == "doom" else (96, 96)
            raise ValueError(
                f"expected frames ({len(slots)}, {h}, {w}, 3) after "
                f"reset({self.batch_size}), got {frames.shape}"
            )
        params = self._params_t.expand(len(slots), -1)
        actions, self.last_z = self.policy.act(frames, slots, params, offset=offset)
        return actions
