"""``worldmodels play``: a page to play inside a run's dream (and the real game beside it)."""

from __future__ import annotations

NAME = "play"
HELP = (
    "Serve a local page on which you drive a run's dream with the arrow keys, beside the real "
    "game, change M's temperature, and let C drive."
)


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run folder with V (vae/), M (mdrnn/) and series/")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--env", choices=("carracing", "doom"), help="the game, if the run does not say")
    p.add_argument("--no-real", action="store_true", help="the dream only, no real game beside it")
    p.add_argument("--temperature", type=float, help="M's starting temperature (default 1.15)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the dream noise and the game's tracks"
    )
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def run(args) -> int:
    from worldmodels.play.server import serve
    from worldmodels.play.session import MAX_TEMPERATURE, load_play_models

    if args.temperature is not None and not 0 < args.temperature <= MAX_TEMPERATURE:
        raise ValueError(f"--temperature must be in (0, {MAX_TEMPERATURE}], got {args.temperature}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    models = load_play_models(args.run_dir, args.device, args.env, real=not args.no_real)
    for name, feature in models.features.items():
        if not feature.on:
            print(f"{name}: off ({feature.why})")

    def ready(url: str) -> None:
        print(f"playing {args.run_dir} ({models.env}) at {url}  (Ctrl-C stops)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)

    serve(models, args.host, args.port, args.seed, args.temperature, on_ready=ready)
    return 0
