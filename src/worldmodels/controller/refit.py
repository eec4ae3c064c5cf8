"""Carry a controller over to another V and M (``ControllerConfig.refit_init``, a deviation).

A warm start from an earlier round's C (``iterate.warm_start``) meets a V and M fine-tuned on
new data. Fine-tuning moves V's latent space, and M's hidden state with it: on the round-2 data
of one `laptop-long` run the same frames' z correlated 0.4 per dimension between the two Vs,
and the old C, whose mean-eval had been 731, gave a first generation averaging 78: CMA-ES
started over. Refitting keeps what C had learnt: on frames that the old C's agent drove (the
round's own episodes), it finds by ridge regression the C of the same shape whose raw outputs
(before the squashing) on the new [z, h] best match the old C's on the old [z, h].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.controller.model import ControllerSpec, check_params
from worldmodels.data.store import EpisodeStore
from worldmodels.vision.vae import frames_to_input

REFIT_EPISODES = 64  # evenly spread over the store: ~64,000 CarRacing steps
RIDGE = 1.0  # a mild ridge on ~64,000 steps of 288 inputs (ill-conditioned without one)
ENCODE_BATCH = 500


@dataclass
class RefitResult:
    params: np.ndarray
    episodes: list[int]
    steps: int
    r2: list[float]  # per output, of the new C's raw outputs against the old C's
    r2_unchanged: list[float]  # the same for the old C's weights on the new inputs

    def record(self) -> dict:
        out = asdict(self)
        out.pop("params")
        return out


def refit_controller(
    params: np.ndarray,
    spec: ControllerSpec,
    old: tuple,
    new: tuple,
    store: EpisodeStore,
    episodes: int = REFIT_EPISODES,
    ridge: float = RIDGE,
) -> RefitResult:
    """C's ``params`` (for ``spec``, read on V and M ``old = (vae, mdrnn)``) refitted for
    ``new = (vae, mdrnn)`` on ``episodes`` episodes of ``store`` (z is V's mean, as C in
    ``z_mode`` mean reads it; M steps with the recorded actions)."""
    if len(spec.layer_sizes) != 1 or spec.uses_cell:
        raise ValueError(f"refit_init refits C on [z] or [z, h], not mode {spec.mode!r}")
    if len(store) == 0:
        raise ValueError(f"refit_init: {store.path} holds no episodes to refit C on")
    params = check_params(params, spec)
    chosen = sorted({int(i) for i in np.linspace(0, len(store) - 1, min(episodes, len(store)))})
    x_old = np.concatenate([controller_inputs(store[i], *old, spec) for i in chosen])
    x_new = np.concatenate([controller_inputs(store[i], *new, spec) for i in chosen])
    n_in, n_out = spec.layer_sizes[0]
    weight = params[: n_in * n_out].reshape(n_in, n_out)
    bias = params[n_in * n_out :] if spec.has_bias else np.zeros(n_out)
    target = x_old @ weight + bias
    features = np.hstack([x_new, np.ones((len(x_new), 1))]) if spec.has_bias else x_new
    penalty = ridge * np.eye(features.shape[1])
    if spec.has_bias:
        penalty[-1, -1] = 0.0  # the bias is not shrunk
    solution = np.linalg.solve(features.T @ features + penalty, features.T @ target)
    refitted = np.concatenate([solution[:n_in].ravel(), solution[n_in:].ravel()])
    return RefitResult(
        params=check_params(refitted, spec),
        episodes=chosen,
        steps=len(x_new),
        r2=r_squared(features @ solution, target),
        r2_unchanged=r_squared(x_new @ weight + bias, target),
    )


@torch.inference_mode()
def controller_inputs(episode, vae, mdrnn, spec: ControllerSpec) -> np.ndarray:
    """C's inputs at every step of a stored episode, as the agent forms them while driving:
    z_t and M's state after the steps before t (zeros at the first)."""
    device = next(vae.parameters()).device
    frames = episode["obs"]
    z = torch.cat(
        [
            vae.encode(frames_to_input(np.array(frames[i : i + ENCODE_BATCH]), device))[0]
            for i in range(0, len(frames), ENCODE_BATCH)
        ]
    )
    if not spec.uses_memory:
        return z.double().cpu().numpy()
    actions = torch.as_tensor(np.array(episode["actions"]), dtype=z.dtype, device=device)
    actions = actions.reshape(len(z), -1)
    restart = None
    if mdrnn.extra_inputs:
        restart = torch.zeros(1, len(z), 1, device=device)
        restart[0, 0] = 1.0
    h_seq, _ = mdrnn.hidden_sequence(z[None], actions[None], restart)
    before = torch.cat([torch.zeros_like(h_seq[0, :1]), h_seq[0, :-1]])  # h before step t
    return torch.cat([z, before], 1).double().cpu().numpy()


def r_squared(prediction: np.ndarray, target: np.ndarray) -> list[float]:
    spread = ((target - target.mean(0)) ** 2).sum(0)
    return [float(v) for v in 1 - ((prediction - target) ** 2).sum(0) / np.maximum(spread, 1e-12)]


def refit_init(
    init: str | Path,
    vae,
    mdrnn,
    spec: ControllerSpec,
    episodes_path: str | Path,
    episodes: int = REFIT_EPISODES,
) -> RefitResult:
    """The warm start ``init`` (a best.npy beside the controller.json naming the V and M it
    drove) refitted for ``vae`` and ``mdrnn`` on ``episodes`` episodes at ``episodes_path``."""
    from worldmodels.agent import checkpoint_paths, load_params
    from worldmodels.controller.train import CONTROLLER_JSON, read_controller_json
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.vision.train import load_vae

    init = Path(init)
    folder = init.parent
    if not (folder / CONTROLLER_JSON).exists():
        raise FileNotFoundError(
            f"refit_init: {folder / CONTROLLER_JSON} not found: the warm start {init} must sit "
            "in the controller folder that names the V and M it drove"
        )
    info = read_controller_json(folder)
    old_spec = ControllerSpec(**info["spec"])
    if old_spec != spec:
        raise ValueError(f"refit_init: {init} is a controller {old_spec}, this run's is {spec}")
    vae_path, mdrnn_path, _ = checkpoint_paths(folder, info)
    device = next(vae.parameters()).device
    old_vae = load_vae(vae_path, device).eval()
    old_mdrnn = load_mdrnn(mdrnn_path, device).eval() if mdrnn_path is not None else None
    return refit_controller(
        load_params(init, spec),
        spec,
        (old_vae, old_mdrnn),
        (vae.eval(), mdrnn.eval() if mdrnn is not None else None),
        EpisodeStore(episodes_path),
        episodes,
    )
