"""``worldmodels train-controller``: evolve C with CMA-ES on real environments."""

from __future__ import annotations

from worldmodels.cli import add_ray_arguments, controller_config, positive_int, ray_settings
from worldmodels.config import ControllerConfig
from worldmodels.controller.model import ALL_MODES

NAME = "train-controller"
HELP = "Evolve the controller with CMA-ES through the batched rollout engine (resumable)."


def add_arguments(p) -> None:
    d = ControllerConfig()
    p.add_argument("--vae", required=True, help="V checkpoint (vae.pt from train-vae)")
    p.add_argument("--mdrnn", help="M checkpoint (mdrnn.pt from train-mdrnn); needed by mode zh")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--env",
        default=d.env,
        choices=("carracing", "doom"),
        help="the game: doom evolves the paper's Doom C ([z, c, h] -> 1) in real ViZDoom games "
        "(the reference for C trained in the dream); it implies --max-steps 2100 and, by "
        "default, --mode zch",
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=ALL_MODES,
        help="controller inputs (default zh; Doom: zch, or zh / z, a deviation)",
    )
    p.add_argument("--popsize", type=positive_int, default=d.popsize)
    p.add_argument("--sigma0", type=float, default=d.sigma0)
    p.add_argument(
        "--rollouts",
        type=positive_int,
        default=d.rollouts,
        help="episodes per candidate; fitness is their mean return",
    )
    p.add_argument("--generations", type=positive_int, default=d.generations)
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many minutes")
    p.add_argument(
        "--early-stop",
        type=positive_int,
        default=None,
        help="training only: end an episode after N steps without reward",
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="evaluate the distribution mean every N generations (0: never)",
    )
    p.add_argument("--eval-episodes", type=positive_int, default=d.eval_episodes)
    p.add_argument(
        "--final-top",
        type=int,
        default=d.final_top,
        help="at the end, replay the N best mean-evals on --final-episodes more selection "
        "tracks and keep the best over all its tracks (0: the best mean-eval)",
    )
    p.add_argument("--final-episodes", type=positive_int, default=d.final_episodes)
    p.add_argument(
        "--init-margin",
        type=float,
        default=d.init_margin,
        metavar="K",
        help="with --init and --final-top: the best mean replaces the warm start only where it "
        "beats it on the final tracks by more than K standard errors (0: any gain)",
    )
    p.add_argument("--backend", default=d.backend, help="auto | gymnasium | envpool")
    p.add_argument("--num-envs", type=positive_int, default=d.num_envs)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--max-steps", type=positive_int, default=None, help="1000; Doom: 2100")
    p.add_argument("--z-mode", default=d.z_mode, choices=("sample", "mean"))
    p.add_argument(
        "--bf16",
        action="store_true",
        help="V's encoder in bfloat16 in training's rollouts (CPUs with AVX512-BF16 or AMX, "
        "GPUs with bf16; evaluation stays float32)",
    )
    p.add_argument(
        "--mirror-tracks",
        action="store_true",
        help="CarRacing: every other training track played on its mirror image (frames "
        "flipped, steering negated; for a V and M trained with --mirror); a deviation",
    )
    p.add_argument(
        "--replay-hard",
        type=int,
        default=d.replay_hard,
        metavar="N",
        help="N of each candidate's rollouts replay the recent training tracks the population "
        "did worst on (each once), the rest fresh; a deviation (0: none)",
    )
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--init",
        help="CMA-ES's first mean: these parameters (a best.npy of the same controller), not 0",
    )
    p.add_argument(
        "--refit-init",
        metavar="EPISODES",
        help="refit the --init controller (evolved on other V and M, beside its controller.json) "
        "onto --vae and --mdrnn by ridge regression on this episode store first; a deviation",
    )
    p.add_argument("--resume", action="store_true", help="continue from the ES checkpoint")
    add_ray_arguments(p)
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from worldmodels.controller.train import train_controller

    config = controller_config(
        args,
        early_stop=args.early_stop,
        final_top=args.final_top,
        final_episodes=args.final_episodes,
        init_margin=args.init_margin,
        backend=args.backend,
        bf16=args.bf16,
        init=args.init,
        mirror_tracks=args.mirror_tracks,
        replay_hard=args.replay_hard,
        refit_init=args.refit_init is not None,
    )
    config.validate()
    if config.refit_init and config.init is None:
        raise ValueError("--refit-init refits the warm start: it needs --init")
    if config.mode in ("zh", "zch") and args.mdrnn is None:
        raise ValueError(f"controller mode {config.mode!r} needs --mdrnn")
    summary = train_controller(
        args.vae,
        args.mdrnn,
        args.out,
        config,
        resume=args.resume,
        progress=not args.no_progress,
        cluster=ray_settings(args),
        episodes_path=args.refit_init,
    )
    print(summary.line())
    return 0
