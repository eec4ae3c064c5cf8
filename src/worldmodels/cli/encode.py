"""``worldmodels encode``: every frame of an episode store through V into a series store."""

from __future__ import annotations

from worldmodels.cli import positive_int

NAME = "encode"
HELP = "Encode an episode store with a trained V into a series store (mu, logvar; resumable)."


def add_arguments(p) -> None:
    p.add_argument("--store", required=True, help="episode store to encode")
    p.add_argument("--vae", required=True, help="trained model: RUN_DIR/vae.pt (or RUN_DIR)")
    p.add_argument("--out", required=True, help="series store folder (created, or resumed)")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="frames per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--mirror",
        action="store_true",
        help="CarRacing: also encode each episode flipped left-right (for train-mdrnn --mirror)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from worldmodels.vision.encode import encode_store

    summary = encode_store(
        args.store,
        args.vae,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        mirror=args.mirror,
    )
    print(summary.line())
    return 0
