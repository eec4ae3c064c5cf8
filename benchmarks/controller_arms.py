"""CarRacing controller recipes compared on one V and M, at equal CMA-ES wall time, same load.

    worldmodels pipeline --preset laptop-1round --out runs/laptop      # stop it once M is trained
    python benchmarks/controller_arms.py --base runs/laptop --out runs/arms --minutes 60

Each arm is the ``laptop-1round`` preset's controller stage with a few ``--set`` changes (``ARMS``
below), run as ``worldmodels pipeline --preset laptop-1round --out ARM --set ...`` on a copy of the
base run's finished collect / V / encode / M stages (hard links: no data is copied). All arms
run at once, pinned round-robin to the machine's cores, so they share the same load: wall time
is the quantity held equal. Each arm is then scored on the same 100 episodes (scoring seeds
0..99, which no training or selection step of C sees; a base run collected before the
collection seed moved to 2,000,000 gave V and M data from those tracks, see the README).
``--score-backend envpool`` (default) scores on seeded EnvPool episodes, minutes instead of
the 20 of gymnasium; pass ``gymnasium`` for the reference. Prints one table row per arm and
writes ``arms.md`` and ``arms.png`` (mean-eval against CMA-ES minutes). Resumable: finished
arms are kept, unfinished ones continue.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BASE_STAGES = ("collect", "train-vae", "encode", "train-mdrnn")
LINKED = ("episodes", "series")  # large and read-only: hard-linked
COPIED = ("vae", "mdrnn")

# every arm starts from the laptop-1round preset's controller as the arms were first run (stop 14):
# C fed a sample of z, sigma0 0.1, training episodes cut after 50 steps without a new tile;
# the preset has since taken the winners' settings, and this keeps each arm's meaning fixed
FIRST_LAPTOP = ["controller.z_mode=sample", "controller.sigma0=0.1", "controller.early_stop=50"]

# name -> (what it tests, --set assignments on top of FIRST_LAPTOP)
ARMS = {
    "no-crn": (
        "16 x 2, every candidate its own tracks (before)",
        ["controller.common_seeds=false", "controller.z_mode=sample"],
    ),
    "crn": ("16 x 2, common tracks per generation", ["controller.z_mode=sample"]),
    "crn-mu": ("16 x 2, common tracks, C sees mu (not a sample)", ["controller.z_mode=mean"]),
    "crn-8x4": (
        "8 x 4, common tracks",
        ["controller.popsize=8", "controller.rollouts=4", "controller.z_mode=sample"],
    ),
    "crn-32x2": ("32 x 2, common tracks, mu", ["controller.popsize=32", "controller.z_mode=mean"]),
    "crn-4x8": (
        "4 x 8, common tracks, mu",
        ["controller.popsize=4", "controller.rollouts=8", "controller.z_mode=mean"],
    ),
    "z-only": ("16 x 2, common tracks, C sees z only (no M)", ["controller.mode=z"]),
    "mu-s05": (
        "16 x 2, common tracks, mu, sigma0 0.05",
        ["controller.z_mode=mean", "controller.sigma0=0.05"],
    ),
    "mu-32x4": (
        "32 x 4, common tracks, mu",
        ["controller.popsize=32", "controller.rollouts=4", "controller.z_mode=mean"],
    ),
    # the laptop preset then ended a training episode after 50 steps without a new tile: a car
    # that spins off the track is cut there, so recovering never pays (the crashes < 300 of
    # mu-s05)
    "mu-s05-es200": (
        "mu-s05, episodes cut after 200 steps without a tile (not 50)",
        ["controller.z_mode=mean", "controller.sigma0=0.05", "controller.early_stop=200"],
    ),
    "mu-s05-full": (
        "mu-s05, full 1,000-step training episodes (no early stop)",
        ["controller.z_mode=mean", "controller.sigma0=0.05", "controller.early_stop=none"],
    ),
}


def prepare_arm(base: Path, arm: Path) -> None:
    """A new run folder holding the base run's finished V and M stages."""
    if (arm / "stages.json").exists():
        return
    stages = json.loads((base / "stages.json").read_text())
    missing = [s for s in BASE_STAGES if s not in stages]
    if missing:
        raise SystemExit(f"{base}: stages not finished yet: {', '.join(missing)}")
    arm.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        shutil.copytree(base / name, arm / name, copy_function=os.link, dirs_exist_ok=True)
    for name in COPIED:
        shutil.copytree(base / name, arm / name, dirs_exist_ok=True)
    shutil.copy(base / "config.json", arm / "config.json")
    kept = {s: stages[s] for s in BASE_STAGES}
    (arm / "stages.json").write_text(json.dumps(kept, indent=1))


def base_assignments(base: Path) -> list[str]:
    """``--set`` values that make the laptop-1round preset match the base run's finished stages (a
    base collected before the collection seed moved from 0 needs collect.seed=0)."""
    from worldmodels.config import assignments, config_differences, preset
    from worldmodels.pipeline import frozen_keys, read_run_config

    saved, _ = read_run_config(base)
    return assignments(
        saved, frozen_keys(config_differences(saved, preset("laptop-1round")), BASE_STAGES)
    )


def arm_command(arm: Path, sets: list[str], minutes: float, backend: str) -> list[str]:
    common = [
        *base_assignments(arm),  # the arm's config.json is the base run's
        *FIRST_LAPTOP,
        f"controller.time_budget_s={minutes * 60:g}",
        "controller.workers=1",  # one EnvPool thread: each arm is pinned to one core
        "controller.env_groups=1",
        f"evaluate.backend={backend}",
        "evaluate.num_envs=16" if backend == "envpool" else "evaluate.num_envs=8",
    ]
    flags = [x for s in [*common, *sets] for x in ("--set", s)]
    return ["worldmodels", "pipeline", "--preset", "laptop-1round", "--out", str(arm), *flags]


def es_rows(arm: Path) -> list[dict]:
    path = arm / "controller" / "log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary(name: str, arm: Path) -> dict:
    rows = es_rows(arm)
    evals = [float(r["eval_mean"]) for r in rows if r["eval_mean"] != ""]
    score = json.loads((arm / "eval.json").read_text()) if (arm / "eval.json").exists() else None
    return {
        "arm": name,
        "what": ARMS[name][0],
        "generations": len(rows),
        "minutes": sum(float(r["seconds"]) for r in rows) / 60,
        "env_steps": sum(int(r["env_steps"]) for r in rows),
        "best_mean_eval": max(evals) if evals else float("nan"),
        "score": f"{score['mean']:.1f} +- {score['std']:.1f}" if score else "not scored",
        "backend": score["backend"] if score else "",
    }


def plot(arms: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, arm in arms.items():
        rows, steps, points = es_rows(arm), 0, []
        for r in rows:
            steps += int(r["env_steps"])
            if r["eval_mean"] != "":
                points.append((steps / 1e6, float(r["eval_mean"])))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1, label=name)
    # env steps, not minutes: arms of different calls may have had different shares of a core
    ax.set_xlabel("env steps of CMA-ES (millions)")
    ax.set_ylabel("mean-eval (16 selection tracks)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--base", required=True, type=Path, help="a laptop-1round run with V and M trained"
    )
    p.add_argument("--out", required=True, type=Path, help="folder of the arms' run folders")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--minutes", type=float, default=60, help="CMA-ES wall minutes per arm")
    p.add_argument("--score-backend", default="envpool", choices=("envpool", "gymnasium"))
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    arms = {name: args.out / name for name in args.arms}
    procs = []
    for k, (name, arm) in enumerate(arms.items()):
        prepare_arm(args.base, arm)
        if (arm / "eval.json").exists():
            continue
        cmd = arm_command(arm, ARMS[name][1], args.minutes, args.score_backend)
        cmd = ["taskset", "-c", str(cores[k % len(cores)]), *cmd]
        log = open(arm / "arm.log", "a")  # noqa: SIM115  (closed when the arm ends)
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for name, proc, log in procs:
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    # the table keeps the arms of earlier calls that share this --out folder
    shown = {n: args.out / n for n in ARMS if (args.out / n / "controller").exists()}
    rows = [summary(name, arm) for name, arm in shown.items()]
    head = "| arm | what | generations | CMA-ES min | env steps | best mean-eval | score (100 ep) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['what']} | {r['generations']} | {r['minutes']:.1f} | "
            f"{r['env_steps'] / 1e6:.2f}M | {r['best_mean_eval']:.1f} | {r['score']} "
            f"({r['backend']}) |"
        )
    table = "\n".join(lines)
    print(table)
    (args.out / "arms.md").write_text(table + "\n")
    plot(shown, args.out / "arms.png")
    if failed:
        sys.exit(f"arms failed: {', '.join(failed)} (see their arm.log)")


if __name__ == "__main__":
    main()
