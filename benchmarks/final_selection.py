"""Does the final selection choose a better C than the best mean-eval? Scored, not guessed.

    worldmodels pipeline --preset laptop-1round --out runs/laptop-final --set controller.final_top=4
    python benchmarks/final_selection.py --run runs/laptop-final

A run trained with ``controller.final_top`` replayed its best few evaluated means on
``final_episodes`` more selection tracks (``controller/selection.json``). This script plays
every one of those candidates on the same scoring episodes (seeds 0..99 by default: tracks no
training or selection step saw) and prints, beside each other, the candidate the 2018 rule
keeps (the best mean-eval on ``eval_episodes`` tracks, the baseline) and the one the final
selection keeps, with the paired difference over the same tracks (a warm start, generation 0,
among them). ``--run`` may also name a controller folder (a run's ``refine/``). Writes
``selection_scores.json`` beside ``selection.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from worldmodels.agent import Agent, find_controller_dir, load_params
from worldmodels.config import ControllerConfig, load_config
from worldmodels.controller.evaluate import evaluate_agent
from worldmodels.controller.train import SELECTION_JSON
from worldmodels.evolution.cmaes import STATE, safe_loads
from worldmodels.utils.io import atomic_write_json, read_json


def score_candidates(run: Path, episodes: int, seed: int, backend: str, num_envs: int) -> dict:
    folder = find_controller_dir(run)
    record = read_json(folder / SELECTION_JSON, "final selection")
    state = safe_loads((folder / STATE).read_bytes())
    agent = Agent.load(folder, which="latest")  # this folder's own V and M, whatever it kept
    by_generation = {int(e["generation"]): e["params"] for e in state.evaluated}
    init = load_config(ControllerConfig, folder / "config.json").init
    if init is not None:  # the warm start competed as generation 0
        by_generation[0] = load_params(Path(init), agent.spec)
    rows = record["candidates"]
    params = np.stack([by_generation[r["generation"]] for r in rows])
    scores = [  # each candidate scored exactly as `worldmodels evaluate` scores best.npy
        evaluate_agent(
            Agent(agent.policy, p, agent.env, agent.vae_path, agent.mdrnn_path),
            episodes=episodes,
            seed=seed,
            num_envs=num_envs,
            backend=backend,
            progress=False,
        )
        for p in params
    ]
    seeds = scores[0].seeds
    returns = np.stack([r.returns for r in scores])
    baseline = max(range(len(rows)), key=lambda i: rows[i]["mean_eval"])
    chosen = next(i for i, r in enumerate(rows) if r["generation"] == record["chosen"])
    diff = returns[chosen] - returns[baseline]
    return {
        "run": str(run),
        "backend": backend,
        "seeds": [seeds[0], seeds[-1]],
        "candidates": [
            {**r, "score_mean": float(x.mean()), "score_std": float(x.std()), "returns": x.tolist()}
            for r, x in zip(rows, returns, strict=True)
        ],
        "baseline_generation": rows[baseline]["generation"],
        "chosen_generation": record["chosen"],
        "paired_difference": float(diff.mean()),
        "paired_se": float(diff.std(ddof=1) / np.sqrt(episodes)) if episodes > 1 else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a run trained with final_top > 0")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="scoring seeds seed..seed+episodes-1")
    p.add_argument("--backend", default="envpool", choices=("envpool", "gymnasium"))
    p.add_argument("--num-envs", type=int, default=16)
    args = p.parse_args()
    result = score_candidates(args.run, args.episodes, args.seed, args.backend, args.num_envs)
    print(
        "| generation | mean-eval | final tracks | all selection tracks | score (scoring seeds) |"
    )
    print("|---|---|---|---|---|")
    for r in result["candidates"]:
        mark = []
        if r["generation"] == result["baseline_generation"]:
            mark.append("best mean-eval (baseline)")
        if r["generation"] == result["chosen_generation"]:
            mark.append("final selection")
        print(
            f"| {r['generation']} {', '.join(mark)} | {r['mean_eval']:.1f} | "
            f"{r['final_mean']:.1f} | {r['selection_mean']:.1f} ({r['episodes']}) | "
            f"{r['score_mean']:.1f} +- {r['score_std']:.1f} |"
        )
    print(
        f"final selection - baseline, same {args.episodes} {args.backend} tracks "
        f"(seeds {result['seeds'][0]}..{result['seeds'][1]}): "
        f"{result['paired_difference']:+.1f} (SE {result['paired_se']:.1f})"
    )
    atomic_write_json(find_controller_dir(args.run) / "selection_scores.json", result)


if __name__ == "__main__":
    main()
