"""C: the controller, a small map from [z, h] to CarRacing's three actions (or Doom's one).

The paper's controller is linear with bias on [z (32), h (256)]: 867 parameters. For the
paper's ablations, ``mode="z"`` sees z alone (V only) and ``mode="z_hidden"`` puts one tanh
hidden layer between z and the actions. ``mode="zch"`` is the paper's Doom controller:
linear, no bias, on [z (64), c (512), h (512)] (M's LSTM cell and hidden state) to one tanh
output, 1,088 parameters, mapped to left / stay / right by :func:`doom_direction`. A Doom C
(``action_size=1``) may also read less, a named deviation: ``"zh"`` ([z, h], 576) or ``"z"``
(z alone, 64), with the same single tanh output and no bias.
CMA-ES searches over the flat parameter vector, and the rollout engine runs a *different*
vector in every environment slot, so the forward pass takes one parameter row per input row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

MODES = ("zh", "z", "z_hidden")  # CarRacing: three squashed actions
# Doom TakeCover: one tanh output, no bias; zch is the paper's, zh and z read less of M
DOOM_MODES = ("zch", "zh", "z")
ALL_MODES = ("zh", "z", "z_hidden", "zch")
DOOM_THRESHOLD = 1 / 3  # tanh output < -1/3: left, > 1/3: right, else stay (the paper's)


@dataclass(frozen=True)
class ControllerSpec:
    z_size: int = 32
    hidden_size: int = 256  # M's LSTM size; used by modes "zh" and "zch"
    mode: str = "zh"
    hidden_units: int = 40  # used by mode "z_hidden"
    action_size: int = 3

    def __post_init__(self):
        if self.mode not in ALL_MODES:
            raise ValueError(f"unknown controller mode {self.mode!r}; choose one of {ALL_MODES}")
        if self.is_doom and self.mode not in DOOM_MODES:
            raise ValueError(
                f"a Doom controller (action_size=1) reads one of {DOOM_MODES}, got {self.mode!r}"
            )
        if not self.is_doom and self.mode not in MODES:
            raise ValueError(
                f"controller mode {self.mode!r} has one output (action_size=1), got "
                f"action_size={self.action_size}; use ControllerSpec.doom()"
            )
        if not self.is_doom and self.action_size != 3:
            raise ValueError(f"controller mode {self.mode!r} drives CarRacing's 3 actions")

    @classmethod
    def doom(cls, z_size: int = 64, hidden_size: int = 512, mode: str = "zch") -> ControllerSpec:
        """Doom's controller: the paper's [z, c, h] -> 1, tanh, no bias (1,088 at 64 + 2 x 512),
        or the same on [z, h] or z alone (``mode``)."""
        return cls(z_size=z_size, hidden_size=hidden_size, mode=mode, action_size=1)

    @property
    def is_doom(self) -> bool:
        """One tanh output: Doom's left / stay / right."""
        return self.action_size == 1

    @property
    def uses_memory(self) -> bool:
        return self.mode in ("zh", "zch")

    @property
    def uses_cell(self) -> bool:
        """Whether C also sees M's LSTM cell state c (the paper's Doom input [z, c, h])."""
        return self.mode == "zch"

    @property
    def has_bias(self) -> bool:
        return not self.is_doom  # the paper's Doom C has none

    @property
    def input_size(self) -> int:
        memory = self.hidden_size * (2 if self.uses_cell else 1) if self.uses_memory else 0
        return self.z_size + memory

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        if self.mode == "z_hidden":
            return [(self.input_size, self.hidden_units), (self.hidden_units, self.action_size)]
        return [(self.input_size, self.action_size)]

    @property
    def num_params(self) -> int:
        bias = int(self.has_bias)
        return sum(n_in * n_out + bias * n_out for n_in, n_out in self.layer_sizes)

    def to_dict(self) -> dict:
        return asdict(self)


def action_box(spec: ControllerSpec) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest action C can give: CarRacing's (steer, gas, brake) box, or
    [-1, 1] for Doom's single tanh output (float32)."""
    if spec.is_doom:
        return np.array([-1.0], np.float32), np.array([1.0], np.float32)
    return np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)


def squash_actions(raw: Tensor) -> Tensor:
    """steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1), as in the paper."""
    t = torch.tanh(raw)
    return torch.stack([t[:, 0], (t[:, 1] + 1) / 2, t[:, 2].clamp(0, 1)], dim=1)


def doom_direction(actions: np.ndarray) -> np.ndarray:
    """The paper's three-way mapping of C's tanh output: -1 left, 0 stay, +1 right (int64).

    ``actions`` (N,) or (N, 1); ``< -1/3`` is left, ``> 1/3`` right, anything between stays.
    """
    a = np.asarray(actions, dtype=np.float32)
    a = a[:, 0] if a.ndim == 2 else a
    return np.where(a < -DOOM_THRESHOLD, -1, np.where(a > DOOM_THRESHOLD, 1, 0)).astype(np.int64)


def controller_actions(params: Tensor, x: Tensor, spec: ControllerSpec) -> Tensor:
    """Actions (N, A) for inputs ``x`` (N, input_size), row i using parameter row ``params[i]``.

    Each layer's parameters are a weight (n_in, n_out), row-major, then a bias (n_out) unless
    the controller has none (Doom's). CarRacing's give (N, 3) squashed actions, Doom's (N, 1) tanh.
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
        h = torch.bmm(h.unsqueeze(1), weight).squeeze(1)
        if spec.has_bias:
            h = h + params[:, offset : offset + n_out]
            offset += n_out
        if layer < len(spec.layer_sizes) - 1:
            h = torch.tanh(h)
    return torch.tanh(h) if spec.is_doom else squash_actions(h)


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
