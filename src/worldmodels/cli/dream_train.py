"""``worldmodels dream-train``: evolve C with CMA-ES inside M's dream, score it in the real game."""

from __future__ import annotations

from worldmodels.cli import add_ray_arguments, controller_config, positive_int, ray_settings
from worldmodels.config import ControllerConfig, DreamConfig
from worldmodels.controller.model import ALL_MODES

NAME = "dream-train"
HELP = (
    "Evolve the controller with CMA-ES inside M's dream (batched dreams, temperature tau); "
    "the distribution mean is scored in the real game (resumable)."
)


def add_dream_arguments(p) -> None:
    """The inputs, the dream and the CMA-ES flags, shared with dream-sweep."""
    c, d = ControllerConfig(), DreamConfig()
    p.add_argument("--mdrnn", required=True, help="M (mdrnn.pt) with a done head")
    p.add_argument("--series", required=True, help="series store: its first frames start dreams")
    p.add_argument("--vae", required=True, help="V (vae.pt), for the real game and Agent.load")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--env", default=d.env, choices=("doom", "carracing"), help="the real game")
    p.add_argument(
        "--mode",
        default=None,
        choices=ALL_MODES,
        help="controller inputs (default: zch = [z, c, h] -> 1 for doom, zh for carracing)",
    )
    p.add_argument("--dream-max-steps", type=positive_int, default=d.max_steps)
    p.add_argument("--max-batch", type=positive_int, default=d.max_batch, help="dreams at once")
    p.add_argument(
        "--select-on-real",
        action="store_true",
        help="best.npy = the mean with the best real evaluation (default: the latest mean; "
        "the paper's C never learns from the real game)",
    )
    p.add_argument("--popsize", type=positive_int, default=c.popsize)
    p.add_argument("--sigma0", type=float, default=c.sigma0)
    p.add_argument("--rollouts", type=positive_int, default=c.rollouts, help="dreams per candidate")
    p.add_argument("--generations", type=positive_int, default=c.generations)
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--weight-decay", type=float, default=c.weight_decay)
    p.add_argument(
        "--eval-every",
        type=int,
        default=c.eval_every,
        help="score the distribution mean in the real game every N generations (0: never)",
    )
    p.add_argument("--eval-episodes", type=positive_int, default=100)
    p.add_argument("--eval-seed", type=int, default=c.eval_seed)
    p.add_argument("--num-envs", type=positive_int, default=16, help="real-game envs")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--max-steps", type=positive_int, default=None, help="real episode limit (doom 2100)"
    )
    p.add_argument("--z-mode", default=c.z_mode, choices=("sample", "mean"))
    p.add_argument("--device", default=c.device)
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--no-progress", action="store_true")


def add_arguments(p) -> None:
    p.add_argument("--temperature", type=float, default=DreamConfig().temperature, help="tau")
    add_dream_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the ES checkpoint")
    p.add_argument(
        "--gif",
        help="also write a GIF (and PNG strip) of C in the real game beside C in the dream",
    )
    add_ray_arguments(p)


def configs(args, temperature: float) -> tuple[ControllerConfig, DreamConfig]:
    controller = controller_config(args, eval_seed=args.eval_seed, backend="gymnasium")
    dream = DreamConfig(
        env=args.env,
        temperature=temperature,
        max_steps=args.dream_max_steps,
        max_batch=args.max_batch,
        select_on_real=args.select_on_real,
    )
    return controller, dream


def run(args) -> int:
    from worldmodels.dream.train import train_in_dream

    controller, dream = configs(args, args.temperature)
    summary = train_in_dream(
        args.mdrnn,
        args.series,
        args.vae,
        args.out,
        controller,
        dream,
        resume=args.resume,
        progress=not args.no_progress,
        cluster=ray_settings(args),
    )
    print(summary.line())
    if args.gif:
        from worldmodels.agent import Agent
        from worldmodels.dream.pictures import dream_beside_real
        from worldmodels.memory.train import load_mdrnn

        agent = Agent.load(args.out, device=args.device)
        made = dream_beside_real(
            agent,
            load_mdrnn(args.mdrnn, agent.policy.device),
            args.gif,
            temperature=dream.temperature,
            max_steps=min(dream.max_steps, controller.max_steps),
        )
        print(f"{made.path}: real game {made.real_steps} steps, dream {made.dream_steps} steps")
    return 0
