"""``worldmodels collect``: exploration rollouts into an episode store."""

from __future__ import annotations

from worldmodels.cli import add_ray_arguments, positive_int, ray_settings
from worldmodels.config import CollectConfig
from worldmodels.data.policies import ENV_POLICIES, POLICIES
from worldmodels.envs.carracing import BACKENDS, ENV_IDS

NAME = "collect"
HELP = "Collect exploration rollouts into an episode store (resumable)."


def add_arguments(p) -> None:
    d = CollectConfig()
    p.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    p.add_argument("--env", default=d.env, help=f"environment: {', '.join(ENV_IDS)}")
    p.add_argument(
        "--backend",
        default=d.backend,
        help=f"{' | '.join(BACKENDS)} (default auto; doom always runs on gymnasium/ViZDoom)",
    )
    p.add_argument("--episodes", type=positive_int, default=d.episodes, help="episodes in total")
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help=f"steps per episode (default {d.max_steps}; doom: 2100, the paper's)",
    )
    p.add_argument(
        "--policy",
        default=None,
        help=f"exploration: {', '.join(POLICIES)} (default {d.policy}; doom: doom_random)",
    )
    p.add_argument("--num-envs", type=positive_int, default=d.num_envs, help="envs in one batch")
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="gymnasium subprocesses (default one per core; 0 = in process)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="episode i uses seed + i")
    add_ray_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from worldmodels.data.collect import collect

    d = CollectConfig()
    doom = args.env == "doom"
    default_policy = ENV_POLICIES.get(args.env, (CollectConfig().policy,))[0]
    config = CollectConfig(
        env=args.env,
        backend="gymnasium" if doom and args.backend == "auto" else args.backend,
        episodes=args.episodes,
        max_steps=args.max_steps or (2100 if doom else d.max_steps),
        policy=args.policy or default_policy,
        num_envs=args.num_envs,
        workers=args.workers,
        seed=args.seed,
    )
    summary = collect(config, args.out, not args.no_progress, ray_settings(args))
    print(summary.line())
    return 0
