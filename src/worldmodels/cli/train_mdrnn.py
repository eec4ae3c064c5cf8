"""``worldmodels train-mdrnn``: train M, the MDN-RNN, on an encoded series store."""

from __future__ import annotations

from worldmodels.cli import add_time_budget_argument, positive_int
from worldmodels.config import MDNRNNConfig

NAME = "train-mdrnn"
HELP = "Train M (the MDN-RNN) on an encoded series store; --resume continues a run exactly."


def add_arguments(p) -> None:
    d = MDNRNNConfig()
    p.add_argument("--series", required=True, help="series store (made by worldmodels encode)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, mdrnn.pt, tb/)")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="optimizer steps")
    add_time_budget_argument(p)
    p.add_argument("--seq-len", type=positive_int, default=d.seq_len, help="steps per window")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="windows/batch")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="Adam learning rate")
    p.add_argument(
        "--lr-decay",
        type=float,
        default=d.lr_decay,
        help=f"multiply the learning rate by this every step, down to {d.min_learning_rate:g}",
    )
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient norm clip")
    p.add_argument("--hidden", type=positive_int, default=d.hidden_size, help="LSTM units")
    p.add_argument("--gaussians", type=positive_int, default=d.num_gaussians, help="mixtures")
    p.add_argument("--reward-head", action="store_true", help="also predict the reward")
    p.add_argument("--done-head", action="store_true", help="also predict episode ends")
    p.add_argument(
        "--pad-short",
        action="store_true",
        help="allow episodes shorter than seq-len + 1 (padded and masked out of the loss)",
    )
    p.add_argument(
        "--mirror",
        action="store_true",
        help="CarRacing: half of the windows from the mirrored episodes (a series encoded "
        "with --mirror; a deviation from the paper)",
    )
    p.add_argument(
        "--val-episodes", type=int, default=d.val_episodes, help="last episodes held out"
    )
    p.add_argument("--val-every", type=positive_int, default=d.val_every, help="steps")
    p.add_argument(
        "--checkpoint-every", type=positive_int, default=d.checkpoint_every, help="steps"
    )
    p.add_argument("--log-every", type=positive_int, default=d.log_every, help="steps")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | mps | cuda:N")
    p.add_argument("--seed", type=int, default=d.seed, help="model init and batch order")
    p.add_argument(
        "--init", help="start from this M's weights (an mdrnn.pt of the same sizes) to fine-tune"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--vae", help="V checkpoint: write dream-vs-real pictures at the end")
    p.add_argument(
        "--episodes",
        help="for the pictures: the episode store encoded (default: the series' source)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from worldmodels.memory.train import train_mdrnn

    config = MDNRNNConfig(
        hidden_size=args.hidden,
        num_gaussians=args.gaussians,
        reward_head=args.reward_head,
        done_head=args.done_head,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        grad_clip=args.grad_clip,
        steps=args.steps,
        time_budget_s=args.time_budget_s,
        val_episodes=args.val_episodes,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        pad_short=args.pad_short,
        mirror=args.mirror,
        device=args.device,
        seed=args.seed,
        init=args.init,
    )
    summary = train_mdrnn(
        args.series,
        args.out,
        config,
        resume=args.resume,
        progress=not args.no_progress,
        vae_path=args.vae,
        episodes_path=args.episodes,
    )
    print(summary.line())
    for path in summary.pictures:
        print(f"picture: {path}")
    return 0
