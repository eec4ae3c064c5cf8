"""Pictures of what V sees: real frames beside their reconstructions (PNG grid, animated GIF).

Reconstructions decode z = mu (no sampling), so a picture shows the model, not the noise.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worldmodels.data.store import EpisodeStore
from worldmodels.utils.io import atomic_write_bytes
from worldmodels.vision.data import read_episode_frames
from worldmodels.vision.vae import ConvVAE, frames_to_input, output_to_frames

PNG_FILE = "recon.png"
GIF_FILE = "recon.gif"
GAP = 2  # pixels between pictures
BACKGROUND = 255


@torch.inference_mode()
def reconstruct(
    model: ConvVAE, frames: np.ndarray, device: torch.device | str, batch_size: int = 256
) -> np.ndarray:
    """uint8 (N, 64, 64, 3) frames -> their uint8 reconstructions through z = mu."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(frames), batch_size):
        mu, _ = model.encode(frames_to_input(frames[start : start + batch_size], device))
        out.append(output_to_frames(model.decode(mu)))
    model.train(was_training)
    return np.concatenate(out)


def comparison_grid(real: np.ndarray, recon: np.ndarray, scale: int = 1) -> np.ndarray:
    """One row of real frames above one row of reconstructions: uint8 (H, W, 3)."""
    rows = [_row(real, scale), _row(recon, scale)]
    gap = np.full((GAP, rows[0].shape[1], 3), BACKGROUND, np.uint8)
    return np.concatenate([rows[0], gap, rows[1]])


def side_by_side(real: np.ndarray, recon: np.ndarray, scale: int = 4) -> np.ndarray:
    """Frames of a movie, real | reconstruction, upscaled ``scale`` times: (T, H, W, 3)."""
    real, recon = _upscale(real, scale), _upscale(recon, scale)
    gap = np.full((*real.shape[:2], GAP, 3), BACKGROUND, np.uint8)
    return np.concatenate([real, gap, recon], axis=2)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_gif(frames: np.ndarray, path: str | Path, fps: int = 25) -> Path:
    """An endlessly looping GIF, written atomically."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    return atomic_write_bytes(path, buf.getvalue())


def write_pictures(
    model: ConvVAE,
    store: EpisodeStore,
    position: int,
    out_dir: str | Path,
    device: torch.device | str,
    grid_frames: int = 8,
    gif_frames: int = 150,
) -> tuple[Path, Path]:
    """recon.png (``grid_frames`` spread over the episode) and recon.gif (its first frames)."""
    out = Path(out_dir)
    frames = read_episode_frames(store, position)
    recon = reconstruct(model, frames[:gif_frames], device)
    pick = np.linspace(0, len(frames) - 1, grid_frames).astype(int)
    grid = comparison_grid(frames[pick], reconstruct(model, frames[pick], device), scale=2)
    png = save_png(grid, out / PNG_FILE)
    gif = save_gif(side_by_side(frames[:gif_frames], recon), out / GIF_FILE)
    return png, gif


def _upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) frames: crisp pixels."""
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def _row(frames: np.ndarray, scale: int) -> np.ndarray:
    frames = _upscale(frames, scale)
    gap = np.full((frames.shape[1], GAP, 3), BACKGROUND, np.uint8)
    parts = []
    for i, frame in enumerate(frames):
        parts += [gap, frame] if i else [frame]
    return np.concatenate(parts, axis=1)
