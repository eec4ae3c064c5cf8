"""``worldmodels collect``: exploration rollouts into an episode store."""

from __future__ import annotations

from worldmodels.cli import add_ray_arguments, positive_int, ray_settings
from worldmodels.config import CollectConfig
from worldmodels.data.policies import POLICIES
from worldmodels.envs import BACKENDS, ENV_IDS

NAME = "collect"
HELP = "Collect exploration rollouts into an episode store (resumable)."


def add_arguments(p) -> None:
    d = CollectConfig()
    p.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    p.add_argument("--env", default=d.env, help=f"environment: {', '.join(ENV_IDS)}")
    p.add_argument(
        "--backend",
        default=d.backend,
        help=f"{' | '.join(BACKENDS)} (default auto; doom runs on ViZDoom's gymnasium wrapper)",
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
    p.add_argument(
        "--agent",
        default=None,
        help="policy agent: the run folder whose trained V, M and C drive (the paper's "
        "iterative procedure)",
    )
    p.add_argument(
        "--agent-noise",
        type=float,
        default=None,
        help=f"policy agent: the largest per-episode scale of the smooth noise added to C's "
        f"actions (default {d.agent_noise})",
    )
    p.add_argument("--num-envs", type=positive_int, default=d.num_envs, help="envs in one batch")
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="gymnasium subprocesses (default one per core; 0 = in process)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="episode i uses seed + i")
    p.add_argument(
        "--min-length",
        type=int,
        default=None,
        help="drop episodes shorter than this and replay them with a new seed "
        "(default 0 = keep all; doom: 101, the paper's)",
    )
    add_ray_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from worldmodels.execution import collect

    config = CollectConfig.for_env(
        args.env,
        backend=args.backend,
        episodes=args.episodes,
        max_steps=args.max_steps,
        policy=args.policy,
        agent=args.agent,
        agent_noise=args.agent_noise,
        num_envs=args.num_envs,
        workers=args.workers,
        seed=args.seed,
        min_length=args.min_length,
    )
    summary = collect(config, args.out, not args.no_progress, ray_settings(args))
    print(summary.line())
    return 0
