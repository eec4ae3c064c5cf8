"""``worldmodels pipeline``: every stage, from a named preset, resumable stage by stage."""

from __future__ import annotations

from worldmodels.cli import add_ray_arguments, ray_settings
from worldmodels.config import PRESETS

NAME = "pipeline"
HELP = (
    "Run collect -> train-vae -> encode -> train-mdrnn -> train-controller -> "
    "refine-controller -> evaluate -> report from a preset; run it again to resume."
)


def add_arguments(p) -> None:
    p.add_argument(
        "--preset",
        default="smoke",
        choices=list(PRESETS),
        help="smoke: minutes; laptop: the best agent in ~2 h on 2 cores (two rounds, the "
        "second warm-started from round 1's C refitted onto its V and M, the better round kept); "
        "laptop-1round: one round, ~2 h; "
        "laptop-iter: two full cold rounds, ~3.5 h; laptop-long: laptop with a round 2 "
        "three times bigger, then its agent refined by a second CMA-ES for 90 min, ~4 h; "
        "paper: the paper's settings; doom: the "
        "paper's Doom TakeCover dream experiment (doom-smoke: its tiny version); "
        "carracing-dream: laptop-scale CarRacing with C trained in M's dream",
    )
    p.add_argument("--out", required=True, help="run folder (created, or resumed)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change one setting of the preset, e.g. --set controller.rollouts=8 --set "
        "collect.policy=random_weights (sections: collect, vae, mdrnn, controller, evaluate, "
        "dream, iterate: --set iterate.rounds=2 collects a second round's data with the first "
        "round's agent, the paper's iterative procedure; a higher iterate.rounds on an "
        "existing run adds rounds after its own; refine: --set refine.time_budget_s=5400 "
        "refines the run's C by a second CMA-ES, also on a finished run); repeatable; saved in "
        "the run's "
        "config.json. On resume, settings of unfinished stages may change, those of finished "
        "stages may not",
    )
    add_ray_arguments(p)
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from worldmodels.config import apply_overrides, preset
    from worldmodels.pipeline import run_pipeline

    paths = run_pipeline(
        apply_overrides(preset(args.preset), args.overrides),
        args.out,
        preset_name=" ".join([args.preset, *(f"--set {o}" for o in args.overrides)]),
        progress=not args.no_progress,
        cluster=ray_settings(args),
    )
    print(f"pipeline finished: report in {paths.report}")
    return 0
