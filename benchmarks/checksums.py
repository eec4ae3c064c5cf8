"""What checking every episode's checksums on first read costs, against one epoch of V.

    python benchmarks/checksums.py --store runs/laptop/episodes [--steps 30]

Every reader of a store (V's frame stream, encode, M's windows, dream resets) checks an
episode's CRC32s the first time it reads that episode (``EpisodeStore(verify=True)``): one
extra pass over the store per run. This prints the seconds of that pass over the whole store
(page cache as it is, then warm) beside the baseline: the seconds of one epoch of V training
on the same store at the images/s measured here for ``--steps`` steps of batch 100.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def verify_all(store_path: Path) -> tuple[float, int, int]:
    from worldmodels.data.store import EpisodeStore

    store = EpisodeStore(store_path, verify=True)
    start = time.perf_counter()
    for i in range(len(store)):
        store[i]
    return time.perf_counter() - start, len(store), store.num_steps


def v_images_per_second(store_path: Path, steps: int) -> float:
    from worldmodels.config import VAEConfig
    from worldmodels.vision.train import train_vae

    config = VAEConfig(max_steps=steps, checkpoint_every=10_000, log_every=10, val_episodes=1)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_vae(store_path, Path(out), config, progress=False)
        seconds = time.perf_counter() - start
    return steps * config.batch_size / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, type=Path, help="an episode store")
    p.add_argument("--steps", type=int, default=30, help="V training steps for the baseline")
    args = p.parse_args()
    first, episodes, frames = verify_all(args.store)
    warm, _, _ = verify_all(args.store)
    rate = v_images_per_second(args.store, args.steps)
    epoch = frames / rate
    print(f"checksum benchmark: {episodes} episodes, {frames} frames in {args.store}")
    print(f"{'pass':<44} {'seconds':>8} {'of a V epoch':>13}")
    print(
        f"{'verify every episode (page cache as found)':<44} {first:>8.1f} {first / epoch:>12.1%}"
    )
    print(f"{'verify every episode (warm)':<44} {warm:>8.1f} {warm / epoch:>12.1%}")
    print(f"{f'baseline: one V epoch at {rate:.0f} images/s':<44} {epoch:>8.1f} {1:>12.0%}")


if __name__ == "__main__":
    main()
