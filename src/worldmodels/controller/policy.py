"""V + M + C inference for a batch of environment slots, one network call per step for all.

Every slot has its own LSTM state, its own controller parameter row and its own noise
generator (for sampling z), so what happens in one slot does not depend on the others:
running candidates side by side gives the same episodes as running each alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from worldmodels.controller.model import ControllerSpec, action_box, controller_actions
from worldmodels.envs.preprocess import preprocess_frames
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.utils.device import autocast, require_native_bf16
from worldmodels.vision.vae import ConvVAE, frames_to_input

Z_MODES = ("sample", "mean")


def check_fits(spec: ControllerSpec, vae: ConvVAE, mdrnn: MDNRNN | None) -> None:
    """A clear error unless a controller of ``spec`` can run on this V and M."""
    if vae.z_size != spec.z_size:
        raise ValueError(f"V has z={vae.z_size} but the controller expects z={spec.z_size}")
    if not spec.uses_memory:
        return
    if mdrnn is None:
        raise ValueError(f"controller mode {spec.mode!r} needs M")
    if mdrnn.z_size != spec.z_size or mdrnn.hidden_size != spec.hidden_size:
        raise ValueError(
            f"M has z={mdrnn.z_size}, h={mdrnn.hidden_size} but the controller expects "
            f"z={spec.z_size}, h={spec.hidden_size}"
        )
    if mdrnn.action_size != spec.action_size:
        raise ValueError(
            f"M takes {mdrnn.action_size} action values but the controller gives {spec.action_size}"
        )


class WorldModelPolicy:
    """Raw frames in, actions out: preprocess, encode (V), act (C), step M's LSTM.

    ``z_mode="sample"`` draws z = mu + sigma * eps as the 2018 code did; ``"mean"`` uses mu.
    ``preprocess``: raw frames -> uint8 (n, 64, 64, 3); CarRacing's crop and resize by
    default, the environment's own for others (``VecDoom.preprocess``). Mode "zch" feeds C
    [z, c, h]; an M with a restart input (``extra_inputs=1``) gets 1 on an episode's first step.
    ``bf16``: V's encoder runs under bfloat16 autocast (a speed option, see
    ``ControllerConfig.bf16``); z, M and C stay float32. Refused where bf16 is not native.
    """

    def __init__(
        self,
        vae: ConvVAE,
        mdrnn: MDNRNN | None,
        spec: ControllerSpec,
        device: torch.device | str = "cpu",
        z_mode: str = "sample",
        preprocess: Callable[[np.ndarray], np.ndarray] = preprocess_frames,
        bf16: bool = False,
    ):
        if z_mode not in Z_MODES:
            raise ValueError(f"unknown z_mode {z_mode!r}; choose one of {Z_MODES}")
        check_fits(spec, vae, mdrnn)
        self.device = torch.device(device)
        if bf16:
            require_native_bf16(self.device, "bf16")
        self.bf16 = bf16
        # channels-last convolutions: the frames arrive NHWC anyway, and oneDNN runs V's
        # encoder ~1.7x faster on one CPU core that way (same outputs to 1e-7)
        self.vae = vae.to(self.device, memory_format=torch.channels_last).eval()
        self.mdrnn = mdrnn.to(self.device).eval() if mdrnn is not None else None
        self.spec = spec
        self.z_mode = z_mode
        self.preprocess = preprocess
        self.reset(0)

    def reset(self, num_slots: int) -> None:
        hidden = self.spec.hidden_size
        self.h = torch.zeros(1, num_slots, hidden, device=self.device)
        self.c = torch.zeros(1, num_slots, hidden, device=self.device)
        self.first = torch.ones(num_slots, dtype=torch.bool, device=self.device)
        self.rngs = [np.random.default_rng() for _ in range(num_slots)]

    def start(self, slots: np.ndarray, seeds: list[int | None]) -> None:
        """New episodes in ``slots``: zero LSTM state, noise seeded by each episode's seed."""
        slots = np.asarray(slots)
        self.h[:, slots] = 0
        self.c[:, slots] = 0
        self.first[slots] = True
        for slot, seed in zip(slots, seeds, strict=True):
            self.rngs[slot] = np.random.default_rng(seed)

    @torch.inference_mode()
    def act(
        self,
        raw_frames: np.ndarray,
        slots: np.ndarray,
        params: torch.Tensor,
        taken: np.ndarray | None = None,
        offset: np.ndarray | None = None,
    ):
        """Actions (n, A) float32 for raw frames (n, H, W, 3) in ``slots``, and their z.

        ``taken`` (n, A): actions chosen by someone else (a person on the play page); they are
        returned and M's state follows them instead of C's, so C can take over at any step.
        ``offset`` (n, A): exploration noise added to C's actions, clipped to the action box.
        """
        slots = np.asarray(slots)
        x = frames_to_input(self.preprocess(raw_frames), self.device, channels_last=True)
        with autocast(self.device, self.bf16):
            mu, logvar = self.vae.encode(x)
        mu, logvar = mu.float(), logvar.float()  # no-ops in float32
        z = mu
        if self.z_mode == "sample":
            noise = np.stack([self.rngs[s].standard_normal(self.spec.z_size) for s in slots])
            z = mu + torch.exp(0.5 * logvar) * torch.as_tensor(
                noise, dtype=mu.dtype, device=mu.device
            )
        inputs = z
        if self.spec.uses_cell:
            inputs = torch.cat([z, self.c[0, slots], self.h[0, slots]], dim=1)
        elif self.spec.uses_memory:
            inputs = torch.cat([z, self.h[0, slots]], dim=1)
        actions = controller_actions(params, inputs, self.spec)
        if offset is not None:
            low, high = (torch.as_tensor(b, device=actions.device) for b in action_box(self.spec))
            offset = torch.as_tensor(offset, dtype=actions.dtype, device=actions.device)
            actions = torch.clamp(actions + offset, low, high)
        if taken is not None:
            actions = torch.as_tensor(taken, dtype=actions.dtype, device=actions.device)
            actions = actions.reshape(len(slots), self.spec.action_size)
        if self.spec.uses_memory:
            restart = None
            if self.mdrnn.extra_inputs:
                restart = self.first[slots].to(z.dtype).reshape(-1, 1, 1)
            _, (h, c) = self.mdrnn.hidden_sequence(
                z.unsqueeze(1),
                actions.unsqueeze(1),
                restart,
                state=(self.h[:, slots], self.c[:, slots]),
            )
            self.h[:, slots] = h
            self.c[:, slots] = c
        self.first[slots] = False
        return actions.float().cpu().numpy(), z
