"""``worldmodels train-vae``: train V, the ConvVAE, on the frames of an episode store."""

from __future__ import annotations

import dataclasses

from worldmodels.cli import add_time_budget_argument, positive_int
from worldmodels.config import VAEConfig

NAME = "train-vae"
HELP = "Train V (the ConvVAE) on an episode store; --resume continues a killed run exactly."

# command-line option -> VAEConfig field; options left out keep the default (or, with
# --resume, the run's saved setting)
OPTIONS = {
    "epochs": "epochs",
    "steps": "max_steps",
    "time_budget_s": "time_budget_s",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "z_size": "z_size",
    "val_episodes": "val_episodes",
    "checkpoint_every": "checkpoint_every",
    "device": "device",
    "bf16": "bf16",
    "channels_last": "channels_last",
    "seed": "seed",
    "init": "init",
    "mirror": "mirror",
}


def add_arguments(p) -> None:
    d = VAEConfig()
    p.add_argument("--store", required=True, help="episode store to train on")
    p.add_argument("--out", required=True, help="run folder (checkpoints, vae.pt, pictures, tb/)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, help=f"epochs (default {d.epochs})")
    length.add_argument("--steps", type=positive_int, help="optimizer steps (instead of epochs)")
    add_time_budget_argument(p)
    p.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.learning_rate})")
    p.add_argument("--z-size", type=positive_int, help=f"latent size (default {d.z_size})")
    p.add_argument("--val-episodes", type=int, help=f"held-out episodes (default {d.val_episodes})")
    p.add_argument(
        "--checkpoint-every", type=positive_int, help=f"steps (default {d.checkpoint_every})"
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="bf16 autocast (CUDA, or a CPU with AVX512-BF16 or AMX)",
    )
    p.add_argument(
        "--channels-last", action="store_true", default=None, help="channels-last convs (CUDA, CPU)"
    )
    p.add_argument(
        "--mirror",
        action="store_true",
        default=None,
        help="CarRacing: half of each batch flipped left-right (a deviation from the paper)",
    )
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument(
        "--init", help="start from this V's weights (a vae.pt or a folder holding one) to fine-tune"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args) -> VAEConfig:
    """Defaults (or the run's saved config with --resume), overridden by the options given."""
    from worldmodels.vision.train import load_run_config

    config = (load_run_config(args.out) if args.resume else None) or VAEConfig()
    changes = {
        field: getattr(args, option)
        for option, field in OPTIONS.items()
        if getattr(args, option) is not None
    }
    if args.epochs is not None:
        changes["max_steps"] = None
    return dataclasses.replace(config, **changes)


def run(args) -> int:
    from worldmodels.vision.train import train_vae

    summary = train_vae(args.store, args.out, build_config(args), args.resume, not args.no_progress)
    print(summary.line())
    return 0
