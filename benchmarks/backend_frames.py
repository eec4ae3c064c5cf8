"""Does V see gymnasium's frames as well as EnvPool's? Its loss on one agent's episodes on each.

    worldmodels collect --out runs/frames-gym --backend gymnasium --policy agent \\
        --agent runs/laptop --agent-noise 0.1 --episodes 8 --seed 20000000
    worldmodels collect --out runs/frames-envpool --backend envpool --policy agent \\
        --agent runs/laptop --agent-noise 0.1 --episodes 8 --seed 20000000
    python benchmarks/backend_frames.py runs/laptop/vae runs/frames-gym runs/frames-envpool

EnvPool draws CarRacing with OpenCV, gymnasium with pygame: close, not pixel-identical. The
presets collect on EnvPool, so V has seen only EnvPool's frames, while scores are measured on
gymnasium. For each store this prints V's reconstruction error (sum of squared error per frame,
decoded from the mean z that C is fed), its KL and the frames' mean colour. The two backends
draw different tracks for the same seed: the stores compare the same agent's driving, not the
same frames.
"""

from __future__ import annotations

import argparse

import numpy as np
from vae_coverage import reconstruct_frames  # benchmarks/, beside this script

from worldmodels.vision.data import open_frame_store
from worldmodels.vision.train import load_vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("vae", help="a vae.pt, or the folder holding one (RUN/vae)")
    p.add_argument("stores", nargs="+", help="episode stores (worldmodels collect)")
    args = p.parse_args()
    vae = load_vae(args.vae).eval()
    for path in args.stores:
        store = open_frame_store(path)
        frames = store.get_frames(np.arange(store.num_steps), "obs", mmap=False)
        error, mu, logvar = (t.numpy() for t in reconstruct_frames(vae, frames))
        kl = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(1)  # q(z|frame) to N(0, I)
        per_episode = np.add.reduceat(error, store.offsets[:-1]) / store.lengths
        se = per_episode.std(ddof=1) / np.sqrt(len(per_episode))  # episodes, not frames
        colour = " ".join(f"{c:.1f}" for c in frames.mean(axis=(0, 1, 2)))
        backend = store.manifest["identity"]["backend"]
        print(
            f"{path} ({backend}): {len(store.lengths)} episodes, {len(frames)} frames: "
            f"reconstruction error {error.mean():.2f} (SE over episodes {se:.2f}, median "
            f"{np.median(error):.2f}), KL {kl.mean():.2f}, mean RGB {colour}"
        )


if __name__ == "__main__":
    main()
