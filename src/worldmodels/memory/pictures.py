"""Dream vs real: what M predicts, decoded by V, beside the real frames.

For one episode, from step ``start``, four rows of frames ``t + 1``:

* ``real``: the real frames;
* ``V(real)``: V's reconstruction of them (decode(mu)): the best M could hope for;
* ``M 1-step``: M's teacher-forced prediction of ``z_{t+1}`` from the real ``z_t`` and
  ``a_t``: the mean of the most likely mixture component, decoded;
* ``M dream``: an open-loop rollout from the real ``z_start`` fed the real actions,
  sampled at temperature ``tau`` (``MDNRNN.sample_sequence``), decoded.

Written as a PNG strip (up to 16 evenly spaced columns) and an animated GIF (every step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.utils.io import atomic_write
from worldmodels.vision.vae import ConvVAE, output_to_frames

LABEL_WIDTH = 84
MAX_COLUMNS = 16


@dataclass
class DreamPictures:
    png: Path
    gif: Path
    one_step_mse: float  # pixel MSE (0..1 scale) of the decoded 1-step predictions vs real
    dream_mse: float  # the same for the open-loop dream
    reconstruction_mse: float  # V alone: decode(mu) vs real


@torch.no_grad()
def dream_rows(
    mdrnn: MDNRNN,
    vae: ConvVAE,
    series_episode: Mapping[str, np.ndarray],
    real_obs: np.ndarray,
    temperature: float = 1.0,
    steps: int = 32,
    start: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The four rows, ``real``, ``V(real)``, ``M 1-step``, ``M dream``, as uint8 frames
    ``(T, 64, 64, 3)`` each (see module doc)."""
    n = len(series_episode["mu"])
    if len(real_obs) != n:
        raise ValueError(f"the series episode has {n} steps but the real one {len(real_obs)}")
    length = min(steps, n - 1 - start)
    if length < 1:
        raise ValueError(f"need at least 2 steps from start {start}; the episode has {n}")
    device = next(mdrnn.parameters()).device
    sl = slice(start, start + length + 1)
    mu = torch.as_tensor(np.array(series_episode["mu"][sl], np.float32), device=device)
    actions = torch.as_tensor(
        np.array(series_episode["actions"][start : start + length], np.float32), device=device
    )[None]
    extra = actions.new_zeros(1, length, mdrnn.extra_inputs) if mdrnn.extra_inputs else None
    mdrnn.eval()
    out, _ = mdrnn(mu[None, :-1], actions, extra=extra)
    best = out.log_pi.argmax(dim=-1, keepdim=True)
    one_step = out.mu.gather(-1, best).squeeze(-1)[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    dream = mdrnn.sample_sequence(mu[None, 0], actions, temperature, extra=extra, generator=gen).z[
        0
    ]
    return {
        "real": np.asarray(real_obs[start + 1 : start + length + 1]),
        "V(real)": _decode(vae, mu[1:]),
        "M 1-step": _decode(vae, one_step),
        "M dream": _decode(vae, dream),
    }


def _decode(vae: ConvVAE, z: torch.Tensor) -> np.ndarray:
    p = next(vae.parameters())
    vae.eval()
    return output_to_frames(vae.decode(z.to(p.device, p.dtype)))


def dream_vs_real(
    mdrnn: MDNRNN,
    vae: ConvVAE,
    series_episode: Mapping[str, np.ndarray],
    real_obs: np.ndarray,
    out_dir: str | Path,
    temperature: float = 1.0,
    steps: int = 32,
    start: int = 0,
    seed: int = 0,
    name: str = "dream_vs_real",
) -> DreamPictures:
    """Write ``out_dir/{name}.png`` (strip) and ``{name}.gif`` (animation); see module doc.

    ``series_episode``: an episode of the series store (or a dict with ``mu`` and
    ``actions``); ``real_obs``: the same episode's frames, uint8 ``(N, 64, 64, 3)``.
    """
    rows = dream_rows(mdrnn, vae, series_episode, real_obs, temperature, steps, start, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _save(out / f"{name}.png", strip(rows), "PNG")
    frames = animation_frames(rows)
    options = {"save_all": True, "append_images": frames[1:], "duration": 80, "loop": 0}
    gif = _save(out / f"{name}.gif", frames[0], "GIF", **options)
    return DreamPictures(
        png,
        gif,
        one_step_mse=_mse(rows["M 1-step"], rows["real"]),
        dream_mse=_mse(rows["M dream"], rows["real"]),
        reconstruction_mse=_mse(rows["V(real)"], rows["real"]),
    )


def _mse(frames: np.ndarray, real: np.ndarray) -> float:
    return float(np.mean(((frames.astype(np.float32) - real.astype(np.float32)) / 255.0) ** 2))


def strip(rows: dict[str, np.ndarray]) -> Image.Image:
    """One labelled row per entry, up to ``MAX_COLUMNS`` evenly spaced time steps."""
    length = len(next(iter(rows.values())))
    cols = np.unique(np.linspace(0, length - 1, min(length, MAX_COLUMNS)).round().astype(int))
    size, gap = 64, 2
    width = LABEL_WIDTH + len(cols) * (size + gap)
    image = Image.new("RGB", (width, len(rows) * (size + gap)), "white")
    draw = ImageDraw.Draw(image)
    for r, (label, frames) in enumerate(rows.items()):
        y = r * (size + gap)
        draw.text((4, y + size // 2 - 6), label, fill="black")
        for c, t in enumerate(cols):
            image.paste(Image.fromarray(frames[t]), (LABEL_WIDTH + c * (size + gap), y))
    return image


def animation_frames(rows: dict[str, np.ndarray], scale: int = 2) -> list[Image.Image]:
    """Per time step, the rows side by side (scaled up), labelled on top."""
    size, gap, head = 64 * scale, 4, 14
    length = len(next(iter(rows.values())))
    frames = []
    for t in range(length):
        image = Image.new("RGB", (len(rows) * (size + gap), size + head), "white")
        draw = ImageDraw.Draw(image)
        for c, (label, row) in enumerate(rows.items()):
            x = c * (size + gap)
            draw.text((x + 2, 1), label if c else f"{label} t+{t + 1}", fill="black")
            tile = Image.fromarray(row[t]).resize((size, size), Image.Resampling.NEAREST)
            image.paste(tile, (x, head))
        frames.append(image.convert("P", palette=Image.Palette.ADAPTIVE))
    return frames


def _save(path: Path, image: Image.Image, fmt: str, **kwargs) -> Path:
    return atomic_write(path, lambda f: image.save(f, format=fmt, **kwargs))
