"""CarRacing: C trained in M's dream against C trained in the real game, at equal wall time.

    worldmodels pipeline --preset carracing-dream --out runs/carracing-dream
    python benchmarks/dream_vs_real.py --run runs/carracing-dream [--episodes 100]

The dream arm is the run's own controller stage (CMA-ES in M's dream, no game in the loop).
The baseline is trained here: real-environment CMA-ES with the ``laptop-1round`` preset's settings
(population 16 x 2 rollouts, early stop, EnvPool when installed) on the same V and M, for the
same CMA-ES wall time as the dream run took (its ``log.csv``), into ``RUN/real-equal-time``. Both
are scored on the same gymnasium CarRacing-v3 seeds (the dream arm's score is the pipeline's
``eval.json`` when it covers them). Run it on a quiet machine: wall time is
the quantity held equal. Resumable: a finished training or evaluation is reused.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

from worldmodels.agent import Agent
from worldmodels.config import preset
from worldmodels.controller.evaluate import evaluate_agent, save_eval
from worldmodels.controller.train import train_controller
from worldmodels.utils.io import atomic_write_json, read_json


def es_log(controller_dir: Path) -> tuple[int, int, float]:
    """Generations, environment (or dream) steps and seconds of a CMA-ES run (its log.csv)."""
    path = controller_dir / "log.csv"
    if not path.exists():
        raise SystemExit(f"{path}: missing; has this CMA-ES run started?")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = sum(int(row["env_steps"]) for row in rows)
    return len(rows), steps, sum(float(row["seconds"]) for row in rows)


def scored(agent_dir: Path, eval_path: Path, episodes: int, seed: int, *earlier: Path) -> dict:
    """A saved evaluation (``eval_path`` or ``earlier``) on these seeds, else a new one."""
    for path in (eval_path, *earlier):
        if path.exists():
            saved = read_json(path, "evaluation")
            if saved["episodes"] == episodes and saved["seeds"][0] == seed:
                return saved
    result = evaluate_agent(Agent.load(agent_dir), episodes=episodes, seed=seed)
    save_eval(result, eval_path, agent_dir)
    return read_json(eval_path, "evaluation")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a finished carracing-dream run")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per arm")
    p.add_argument("--seed", type=int, default=0, help="evaluation seeds: seed, seed + 1, ...")
    args = p.parse_args()
    run = args.run
    stages = read_json(run / "stages.json", "stage record")
    if "train-controller" not in stages:
        raise SystemExit(f"{run}: the controller stage has not finished (stages.json)")
    _, _, budget = es_log(run / "controller")  # CMA-ES time, without the stage's GIF

    real_dir = run / "real-equal-time"
    config = dataclasses.replace(preset("laptop-1round").controller, time_budget_s=budget)
    train_controller(
        run / "vae" / "vae.pt",
        run / "mdrnn" / "mdrnn.pt",
        real_dir,
        config,
        resume=(real_dir / "es_state.pkl").exists(),
    )

    arms = {"dream": run / "controller", "real": real_dir}
    results = {}
    for name, folder in arms.items():
        generations, steps, seconds = es_log(folder)
        eval_path = folder / f"eval-{args.episodes}.json"
        pipeline_eval = (run / "eval.json",) if name == "dream" else ()
        score = scored(folder, eval_path, args.episodes, args.seed, *pipeline_eval)
        results[name] = {
            "generations": generations,
            "steps": steps,
            "minutes": seconds / 60,
            "mean": score["mean"],
            "std": score["std"],
        }
    atomic_write_json(run / "dream_vs_real.json", {"budget_s": budget, **results})

    print(f"equal wall time: {budget / 60:.1f} min of CMA-ES each (the time budget is checked")
    print("between generations, so each arm may run over by one), same V and M")
    print(
        f"{'arm':<6} {'minutes':>7} {'generations':>11} {'steps':>16}  "
        f"score, {args.episodes} episodes"
    )
    for name, r in results.items():
        kind = "dream" if name == "dream" else "env"
        print(
            f"{name:<6} {r['minutes']:>7.1f} {r['generations']:>11} {r['steps']:>10,} {kind:<5} "
            f"{r['mean']:.1f} +- {r['std']:.1f}"
        )


if __name__ == "__main__":
    main()
