"""How well does each V see each kind of data? Reconstruction error and live latent dimensions.

    python benchmarks/vae_coverage.py --vae runs/laptop/vae/vae.pt runs/laptop-iter2/vae/vae.pt \
        --store runs/probe/brownian runs/probe/agent

For every V (the first is the baseline) and every store, frames spread evenly over the store
are encoded and decoded (z = mu): the mean squared error per frame, summed over its 64 x 64 x 3
values in [0, 1] (V's training loss term), and the latent dimensions that carry the frame
(mean posterior sigma < 0.5; the others sit near the prior, sigma ~1, and are noise to C).
A V trained on random driving reconstructs a trained driver's frames worse than its own data:
this puts a number on it, store by store.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldmodels.data.store import EpisodeStore
from worldmodels.vision.train import load_vae
from worldmodels.vision.vae import frames_to_input

LIVE_SIGMA = 0.5


def even_frames(store: EpisodeStore, count: int) -> np.ndarray:
    steps = np.linspace(0, store.num_steps - 1, min(count, store.num_steps)).astype(np.int64)
    return store.get_frames(steps)


@torch.inference_mode()
def reconstruct_frames(vae, frames: np.ndarray, batch: int = 500):
    """Per frame: (squared reconstruction error from z = mu, posterior mu, posterior logvar)."""
    errors, mus, logvars = [], [], []
    for i in range(0, len(frames), batch):
        x = frames_to_input(frames[i : i + batch], "cpu")
        mu, logvar = vae.encode(x)
        errors.append((vae.decode(mu) - x).pow(2).flatten(1).sum(1))
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(errors), torch.cat(mus), torch.cat(logvars)


def coverage(vae, frames: np.ndarray) -> tuple[float, int]:
    errors, _, logvar = reconstruct_frames(vae, frames)
    sigma = torch.exp(0.5 * logvar).mean(0)
    return float(errors.mean()), int((sigma < LIVE_SIGMA).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", nargs="+", required=True, help="vae.pt files (first: baseline)")
    p.add_argument("--store", nargs="+", required=True, help="episode stores to measure on")
    p.add_argument("--frames", type=int, default=2000, help="frames per store")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = {path: even_frames(EpisodeStore(path), args.frames) for path in args.store}
    base = {}
    print(f"{'V':<48} {'store':<36} {'error/frame':>12} {'vs baseline':>12} {'live dims':>10}")
    for k, vae_path in enumerate(args.vae):
        vae = load_vae(vae_path).eval()
        for store_path, frames in data.items():
            error, live = coverage(vae, frames)
            if k == 0:
                base[store_path] = error
            ratio = error / base[store_path]
            print(
                f"{vae_path:<48} {store_path:<36} {error:>12.1f} {ratio:>11.2f}x "
                f"{live:>4} of {vae.z_size}"
            )


if __name__ == "__main__":
    main()
