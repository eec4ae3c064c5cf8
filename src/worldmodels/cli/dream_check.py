"""``worldmodels dream-check``: is M's dream as hard as the game? (before training C in it)"""

from __future__ import annotations

from pathlib import Path

from worldmodels.cli import positive_int
from worldmodels.config import DreamConfig

NAME = "dream-check"
HELP = (
    "Replay real episodes' own actions in M's dream and compare lengths, returns and deaths "
    "with the game's: a dream far easier than the game teaches C to exploit M."
)


def add_arguments(p) -> None:
    d = DreamConfig()
    p.add_argument("--mdrnn", required=True, help="M (mdrnn.pt) with a done head")
    p.add_argument("--series", required=True, help="series store: the real episodes replayed")
    p.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=[d.temperature],
        help="tau (several: one line each)",
    )
    p.add_argument("--dream-max-steps", type=positive_int, default=d.max_steps)
    p.add_argument("--episodes", type=positive_int, default=200, help="episodes replayed")
    p.add_argument(
        "--held-actions",
        action="store_true",
        help="Doom: also hold left, stay and right from the same real starts in the game and in "
        "the dream, and compare survival and where the view moves (needs --vae)",
    )
    p.add_argument("--vae", help="V (vae.pt), to decode the dream for --held-actions")
    p.add_argument(
        "--controller",
        metavar="RUN",
        help="Doom: also play this run's controller (its V, M and best.npy) from the same real "
        "starts in the game and in the dream, and replay its game actions in the dream: how "
        "long each lasts and how C steers",
    )
    p.add_argument(
        "--probe-episodes",
        type=positive_int,
        default=16,
        help="real starts for --held-actions and --controller",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from worldmodels.dream.check import replay_in_dream
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.utils.device import pick_device

    if args.held_actions and not args.vae:
        raise ValueError("--held-actions needs --vae (to decode the dream's view)")
    device = pick_device(args.device)
    mdrnn = load_mdrnn(args.mdrnn, device)
    agent = None
    if args.controller:
        from worldmodels.agent import Agent

        agent = Agent.load(args.controller, device=args.device)
        own = agent.mdrnn_path
        if own is not None and own.resolve() != Path(args.mdrnn).resolve():
            print(f"note: {args.controller}'s C reads M {own}; dreams in {args.mdrnn}")
    for tau in args.temperature:
        dream = DreamConfig(temperature=tau, max_steps=args.dream_max_steps)
        dream.validate()
        print(replay_in_dream(mdrnn, args.series, dream, args.episodes, args.seed).line())
        if args.held_actions:
            from worldmodels.dream.probe import probe_held_actions
            from worldmodels.vision.train import load_vae

            vae = load_vae(args.vae, device)
            probe = probe_held_actions(
                mdrnn, vae, args.series, dream, args.probe_episodes, seed=args.seed
            )
            print(probe.table())
        if agent is not None:
            from worldmodels.dream.probe import probe_controller

            driven = probe_controller(
                agent, mdrnn, args.series, dream, args.probe_episodes, seed=args.seed
            )
            print(driven.table())
    return 0
