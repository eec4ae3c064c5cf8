"""``worldmodels evaluate``: score a trained agent in its real game (CarRacing-v3 or Doom)."""

from __future__ import annotations

from pathlib import Path

from worldmodels.cli import add_ray_arguments, positive_int, ray_settings
from worldmodels.config import EvalConfig

NAME = "evaluate"
HELP = "Score a run's agent over N full gymnasium episodes (seeds S, S+1, ...): mean +- std."


def add_arguments(p) -> None:
    d = EvalConfig()
    p.add_argument("run_dir", help="a pipeline run folder, or a train-controller output folder")
    p.add_argument("--episodes", type=positive_int, default=d.episodes)
    p.add_argument("--seed", type=int, default=d.seed, help="episode i uses seed S + i")
    p.add_argument("--num-envs", type=positive_int, default=d.num_envs)
    p.add_argument("--workers", type=int, default=None, help="gymnasium subprocesses")
    p.add_argument(
        "--backend",
        default=d.backend,
        help="gymnasium (the reference for reported scores) or envpool",
    )
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help=f"episode limit (default: the game's, {d.max_steps} CarRacing, 2100 Doom)",
    )
    p.add_argument(
        "--env-groups",
        type=positive_int,
        default=d.env_groups,
        help="environment batches stepped in turn, networks of one beside the others' envs "
        "(1: synchronous); the returns do not depend on it",
    )
    p.add_argument("--params", default="best", choices=("best", "latest"))
    p.add_argument(
        "--out", help="JSON with every episode's return and seed (default RUN_DIR/eval.json)"
    )
    p.add_argument("--video", help="also record the episode of --seed as a .gif or .mp4")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    add_ray_arguments(p)


def run(args) -> int:
    from worldmodels.agent import Agent, find_controller_dir, kept_run
    from worldmodels.controller.evaluate import (
        check_video,
        evaluate_agent,
        record_video,
        save_eval,
    )
    from worldmodels.controller.train import read_controller_json
    from worldmodels.envs.doom import DEFAULT_MAX_STEPS as DOOM_MAX_STEPS

    agent = Agent.load(args.run_dir, device=args.device, which=args.params)
    folder = find_controller_dir(args.run_dir)
    kept = kept_run(folder, read_controller_json(folder)) if args.params == "best" else None
    if kept is not None:  # an earlier round's, or the refined one (RUN/refine)
        print(f"the run's agent is {kept}'s (agent_from in its controller.json)")
    if args.video:
        check_video(agent, args.video)  # before the episodes, not after them
    if args.max_steps is None:
        args.max_steps = DOOM_MAX_STEPS if agent.env == "doom" else EvalConfig().max_steps
    result = evaluate_agent(
        agent,
        episodes=args.episodes,
        seed=args.seed,
        num_envs=args.num_envs,
        backend=args.backend,
        workers=args.workers,
        max_steps=args.max_steps,
        progress=not args.no_progress,
        cluster=ray_settings(args),
        groups=args.env_groups,
    )
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval.json"
    save_eval(result, out, args.run_dir)
    print(result.line())
    print(f"episode returns and seeds: {out}")
    if args.video:
        ret = record_video(agent, args.video, seed=args.seed, max_steps=args.max_steps)
        print(f"video of seed {args.seed} (return {ret:.1f}): {args.video}")
    return 0
