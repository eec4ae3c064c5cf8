"""The ``worldmodels`` command: one module per subcommand, each with ``--help``.

A subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``.
Errors the user can fix (bad names, bad counts, missing or corrupt files) end in a one-line
message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading

from worldmodels import __version__

COMMANDS = [
    "collect",
    "train-vae",
    "encode",
    "train-mdrnn",
    "train-controller",
    "dream-check",
    "dream-train",
    "dream-sweep",
    "evaluate",
    "pipeline",
    "play",
    "info",
]

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
    ConnectionError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldmodels",
        description="World Models (Ha & Schmidhuber, 2018): collect, train V, M and C, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"worldmodels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"worldmodels.cli.{name.replace('-', '_')}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def minutes(text: str) -> float:
    """A positive number of minutes, as seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return value * 60


def add_time_budget_argument(p: argparse.ArgumentParser) -> None:
    """``--time-budget MINUTES`` of training (V, M), stored as ``time_budget_s``."""
    p.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=minutes,
        metavar="MINUTES",
        help="also stop after this many minutes of training (counted over resumed runs)",
    )


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="spread the work over Ray workers: HOST:PORT of a cluster's head, 'auto' for the "
        "cluster `ray start` made here; with no ADDRESS, $RAY_ADDRESS or a local Ray instance",
    )
    p.add_argument(
        "--ray-cpus-per-worker",
        type=positive_int,
        default=1,
        help="CPUs each Ray worker reserves (workers = cluster CPUs / this)",
    )
    p.add_argument("--ray-workers", type=positive_int, default=None, help="fix the worker count")
    p.add_argument(
        "--ray-timeout",
        type=positive_int,
        default=600,
        metavar="SECONDS",
        help="give up, naming what is missing, when no work finishes for this long (a lost "
        "node whose workers cannot be placed again)",
    )


def controller_config(args, **settings):
    """The ControllerConfig of the CMA-ES flags train-controller and dream-train share, with
    ``settings`` (the command's own) on top; Doom's defaults follow ``--env``."""
    from worldmodels.config import ControllerConfig

    doom = args.env == "doom"
    return ControllerConfig(
        env=args.env,
        mode=args.mode or ("zch" if doom else "zh"),
        popsize=args.popsize,
        sigma0=args.sigma0,
        rollouts=args.rollouts,
        generations=args.generations,
        time_budget_s=None if args.time_budget is None else args.time_budget * 60,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        num_envs=args.num_envs,
        workers=args.workers,
        max_steps=args.max_steps or (2100 if doom else ControllerConfig.max_steps),
        z_mode=args.z_mode,
        device=args.device,
        seed=args.seed,
        **settings,
    )


def ray_settings(args):
    """RaySettings from the flags, or None without --ray (then nothing imports Ray)."""
    from worldmodels.distributed.cluster import settings_from_flag

    return settings_from_flag(
        args.ray,
        cpus_per_worker=args.ray_cpus_per_worker,
        workers=args.ray_workers,
        stall_timeout_s=float(args.ray_timeout),
    )


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled as Ctrl-C is (the stage stops, finished work is kept)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []


def _interruption(signum: int) -> KeyboardInterrupt:
    """What a signal raises: Ctrl-C's own KeyboardInterrupt, or Stopped naming the signal."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def _stop(signum, frame):
    _received.append(signum)
    raise _interruption(signum)


@contextlib.contextmanager
def stop_on_termination_signals():
    """SIGTERM (kill, timeout, schedulers) and SIGHUP (a closed terminal) end a command the
    way Ctrl-C does: its ``finally`` blocks close workers, games, Ray and writers. The
    previous handlers come back afterwards (``main`` may run inside another program)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGINT too, only so that a swallowed one is still seen (it raises KeyboardInterrupt)
    signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    _received.clear()
    previous = {s: signal.signal(s, _stop) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    from worldmodels.data.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        with stop_on_termination_signals():
            code = args.run(args) or 0
            if _received:
                # The handler's exception was swallowed (a signal that lands in a fork hook or
                # a finaliser is "ignored" by Python) and the command ran on to its end: its
                # work is done and saved, but the exit status still says it was stopped.
                raise _interruption(_received[0])
            return code
    except (StoreError, *USER_ERRORS) as e:
        print(f"worldmodels {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = f"stopped by {e}" if isinstance(e, Stopped) else "interrupted"
        print(
            f"\nworldmodels {args.command}: {how}; finished work is kept, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 128 + (e.signum if isinstance(e, Stopped) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
