"""Can the play page hold 30 frames per second on this machine? Time one page's steps.

    python benchmarks/play.py --run runs/laptop [--steps 300] [--threads 2]

Times what the server does for one page per step, measured on the session itself (no browser):
M's step plus V's decoding of the dream frame; the real game's step plus V's encoding and M's
step on the game's frame; and the whole answer (both views, the JSON with two base64 frames).
The baseline is the page's frame budget: 1000 / 30 = 33.3 ms per step. Prints each part in ms
(median and 95th percentile) and the frame rate the whole step allows. Person keys and C
driving are timed separately (C adds its linear layer on the dream's state).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

BUDGET_MS = 1000 / 30


def time_steps(session, steps: int, keys: list[str]) -> dict[str, np.ndarray]:
    parts = {"dream": [], "real": [], "answer": []}
    for _ in range(steps):
        if session.dream_side.over or (session.real_side and session.real_side.over):
            session.reset()
        start = time.perf_counter()
        state = session.step(keys)
        json.dumps(state)
        parts["answer"].append((time.perf_counter() - start) * 1e3)
        parts["dream"].append(state["dream"]["ms"])
        if state["real"] is not None:
            parts["real"].append(state["real"]["ms"])
    return {k: np.array(v) for k, v in parts.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run folder (V, M, series, C)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the server's)")
    args = p.parse_args()

    import torch

    from worldmodels.play.session import PlaySession, load_play_models

    torch.set_num_threads(args.threads)
    models = load_play_models(args.run)
    print(f"run {args.run} ({models.env}), torch threads {args.threads}, {args.steps} steps each")
    print(f"baseline: the page's budget at 30 frames/s = {BUDGET_MS:.1f} ms per step")
    drivers = ["person"] + (["c"] if models.features["controller"].on else [])
    key = ["ArrowUp"] if models.env == "carracing" else ["ArrowLeft"]
    for driver in drivers:
        session = PlaySession(models, seed=0)
        try:
            session.set_driver(driver)
            time_steps(session, 20, key)  # warm-up
            parts = time_steps(session, args.steps, key)
        finally:
            session.close()
        for name, ms in parts.items():
            print(
                f"  {driver:>6} {name:>6}: median {np.median(ms):6.2f} ms, "
                f"p95 {np.percentile(ms, 95):6.2f} ms"
            )
        whole = np.median(parts["answer"])
        verdict = "holds" if whole < BUDGET_MS else "misses"
        print(
            f"  {driver:>6} whole step {whole:.2f} ms = {1000 / whole:.0f} steps/s: {verdict} "
            f"30 frames/s ({BUDGET_MS / whole:.1f}x the budget)"
        )


if __name__ == "__main__":
    main()
