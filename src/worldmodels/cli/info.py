"""``worldmodels info``: what a store holds, optionally verifying every checksum."""

from __future__ import annotations

import json

NAME = "info"
HELP = "Describe an episode or series store; --verify checks every file's checksums."


def add_arguments(p) -> None:
    p.add_argument("store", help="store folder")
    p.add_argument("--verify", action="store_true", help="read every file and check its CRC32")


def run(args) -> int:
    import numpy as np

    from worldmodels.data.store import EpisodeStore

    store = EpisodeStore(args.store)
    returns = [ep.meta.get("return") for ep in store if ep.meta.get("return") is not None]
    print(f"store: {store.path} ({store.kind})")
    print(f"identity: {json.dumps(store.manifest['identity'], sort_keys=True)}")
    print(f"episodes: {len(store)}, steps: {store.num_steps}")
    if len(store):
        first = store[0]
        arrays = ", ".join(f"{k} {first[k].dtype}{list(first[k].shape[1:])}" for k in first.keys)
        lengths = store.lengths
        print(f"arrays: {arrays}")
        print(
            f"episode length: mean {lengths.mean():.1f}, min {lengths.min()}, max {lengths.max()}"
        )
    if returns:
        print(f"return: mean {np.mean(returns):.1f} +- {np.std(returns):.1f}")
    if args.verify:
        store.verify()
        print("verify: every checksum matches")
    return 0
