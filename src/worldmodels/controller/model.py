"""C: the controller, a small map from [z, h] to CarRacing's three actions.

The paper's controller is linear with bias on [z (32), h (256)]: 867 parameters. For the
paper's ablations, ``mode="z"`` sees z alone (V only) and ``mode="z_hidden"`` puts one tanh
hidden layer between z and the actions. CMA-ES searches over the flat parameter vector, and
the rollout engine runs a *different* vector in every environment slot, so the forward pass
takes one parameter row per input row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

MODES = ("zh", "z", "z_hidden")


@dataclass(frozen=True)
class ControllerSpec:
    z_size: int = 32
    hidden_size: int = 256  # M's LSTM size; used by mode "zh"
    mode: str = "zh"
    hidden_units: int = 40  # used by mode "z_hidden"
    action_size: int = 3

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown controller mode {self.mode!r}; choose one of {MODES}")

    @property
    def uses_memory(self) -> bool:
        return self.mode == "zh"

    @property
    def input_size(self) -> int:
        return self.z_size + (self.hidden_size if self.uses_memory else 0)

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        if self.mode == "z_hidden":
            return [(self.input_size, self.hidden_units), (self.hidden_units, self.action_size)]
        return [(self.input_size, self.action_size)]

    @property
    def num_params(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in self.layer_sizes)

    def to_dict(self) -> dict:
        return asdict(self)


def squash_actions(raw: Tensor) -> Tensor:
    """steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1), as in the paper."""
    t = torch.tanh(raw)
    return torch.stack([t[:, 0], (t[:, 1] + 1) / 2, t[:, 2].clamp(0, 1)], dim=1)


def controller_actions(params: Tensor, x: Tensor, spec: ControllerSpec) -> Tensor:
    """Actions (N, 3) for inputs ``x`` (N, input_size), row i using parameter row ``params[i]``.

    Each layer's parameters are a weight (n_in, n_out), row-major, then a bias (n_out).
    """
    if params.shape[-1] != spec.num_params:
        raise ValueError(
            f"expected {spec.num_params} controller parameters, got {params.shape[-1]}"
        )
    if x.shape[-1] != spec.input_size:
        raise ValueError(f"expected controller inputs of size {spec.input_size}, got {x.shape[-1]}")
    n, offset, h = x.shape[0], 0, x
    for layer, (n_in, n_out) in enumerate(spec.layer_sizes):
        weight = params[:, offset : offset + n_in * n_out].reshape(n, n_in, n_out)
        offset += n_in * n_out
        bias = params[:, offset : offset + n_out]
        offset += n_out
        h = torch.bmm(h.unsqueeze(1), weight).squeeze(1) + bias
        if layer < len(spec.layer_sizes) - 1:
            h = torch.tanh(h)
    return squash_actions(h)


def check_params(
    params: np.ndarray, spec: ControllerSpec, source: str = "parameters"
) -> np.ndarray:
    """A flat float vector of the right length for ``spec``, or an error naming ``source``."""
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 1 or params.size != spec.num_params:
        raise ValueError(
            f"{source}: expected a vector of {spec.num_params} controller parameters for mode "
            f"{spec.mode!r} (z={spec.z_size}, h={spec.hidden_size}), got shape {params.shape}"
        )
    if not np.isfinite(params).all():
        raise ValueError(f"{source}: controller parameters contain NaN or inf")
    return params
