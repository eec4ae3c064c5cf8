"""Which CarRacing tracks does an agent lose points on? Its returns against each track's bends.

    worldmodels evaluate runs/laptop --episodes 100 --seed 0
    python benchmarks/track_bends.py runs/laptop/eval.json

Rebuilds the track of every seed in a gymnasium evaluation (a reset, no driving), measures its
sharpest left-hand and right-hand bend (the largest heading change over ``--tiles``
consecutive road tiles, in radians) and prints how the returns go with each, the tracks split
at the median bend, and the worst tracks. CarRacing's tracks run anticlockwise (their headings
turn +2 pi over a lap), so sharp right-hand bends are the rarer ones. EnvPool evaluations are
refused: its seeds draw other tracks than gymnasium's.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

from worldmodels.utils.io import read_json


def sharpest_bends(seed: int, tiles: int) -> tuple[float, float, int]:
    """(sharpest left, sharpest right, number of tiles) of the track gymnasium draws for seed."""
    env = gym.make("CarRacing-v3")
    try:
        env.reset(seed=seed)
        track = env.unwrapped.track  # one (alpha, heading, x, y) per road tile
    finally:
        env.close()
    heading = np.unwrap(np.array([tile[1] for tile in track]))
    turn = heading[tiles:] - heading[:-tiles]
    return float(turn.max()), float(-turn.min()), len(track)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("eval_json", help="an evaluation's JSON (worldmodels evaluate, gymnasium)")
    p.add_argument("--tiles", type=int, default=6, help="a bend: the heading change over N tiles")
    p.add_argument("--worst", type=int, default=8, help="list the N lowest-scoring tracks")
    args = p.parse_args()
    result = read_json(args.eval_json, "evaluation")
    if result.get("backend") != "gymnasium" or result.get("env", "carracing") != "carracing":
        raise SystemExit(f"{args.eval_json}: a gymnasium CarRacing evaluation is needed")
    seeds, returns = np.array(result["seeds"]), np.array(result["returns"])
    bends = np.array([sharpest_bends(int(s), args.tiles) for s in seeds])
    left, right, tiles = bends.T
    print(f"{len(seeds)} tracks of {args.eval_json}: mean return {returns.mean():.1f}")
    for name, bend in (("left", left), ("right", right)):
        sharp = bend > np.median(bend)
        print(
            f"sharpest {name}-hand bend: median {np.median(bend):.2f} rad; correlation with the "
            f"return {np.corrcoef(returns, bend)[0, 1]:+.2f}; mean return "
            f"{returns[sharp].mean():.1f} on the {sharp.sum()} sharper tracks, "
            f"{returns[~sharp].mean():.1f} on the others"
        )
    print(f"track length: correlation with the return {np.corrcoef(returns, tiles)[0, 1]:+.2f}")
    print("worst tracks (seed, return, sharpest left, sharpest right, tiles):")
    for i in np.argsort(returns)[: args.worst]:
        row = f"{returns[i]:7.1f} {left[i]:5.2f} {right[i]:5.2f} {int(tiles[i]):4d}"
        print(f"  {seeds[i]:>6} {row}")


if __name__ == "__main__":
    main()
