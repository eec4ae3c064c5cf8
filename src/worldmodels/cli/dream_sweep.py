"""``worldmodels dream-sweep``: the paper's temperature table (dream score vs real score)."""

from __future__ import annotations

from worldmodels.cli import add_ray_arguments, positive_int, ray_settings
from worldmodels.cli.dream_train import add_dream_arguments, configs

NAME = "dream-sweep"
HELP = (
    "Train C in the dream at several temperatures and score each in the dream and in the "
    "real game (OUT/sweep.md); every run resumes if it exists."
)


def add_arguments(p) -> None:
    p.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.1, 0.5, 1.0, 1.15, 1.3],
        help="tau values (default: the paper's Doom table plus 0.5)",
    )
    p.add_argument("--dream-episodes", type=positive_int, default=100, help="dreams per score")
    add_dream_arguments(p)
    add_ray_arguments(p)


def run(args) -> int:
    from worldmodels.dream.sweep import temperature_sweep

    controller, dream = configs(args, args.temperatures[0])
    temperature_sweep(
        args.mdrnn,
        args.series,
        args.vae,
        args.out,
        controller,
        dream,
        args.temperatures,
        dream_episodes=args.dream_episodes,
        real_episodes=args.eval_episodes,
        progress=not args.no_progress,
        cluster=ray_settings(args),
    )
    print(f"temperature table: {args.out}/sweep.md")
    return 0
