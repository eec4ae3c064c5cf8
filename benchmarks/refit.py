"""Does the earlier round's C survive the later round's V and M? With and without refit_init.

    python benchmarks/refit.py runs/laptop-long

For an iterated run (RUN/round1 ... and RUN itself), plays the round before's C on the same
selection tracks three ways: on its own V and M (what it was evolved for), on the run's V and
M as it is (an unrefitted warm start), and refitted onto them (``controller.refit_init``:
ridge regression on ``--fit-episodes`` of the run's episodes, each number in turn). Prints each
mean and the refit's R^2 per output (steering, gas, brake). Seeds from 1,000,000: the
selection tracks, not the scoring ones.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from worldmodels.agent import Agent, load_params
from worldmodels.controller.evaluate import evaluate_agent
from worldmodels.controller.refit import refit_init


def with_params(agent: Agent, params: np.ndarray) -> Agent:
    """The agent's V and M driven by other C parameters."""
    return Agent(agent.policy, params, agent.env, agent.vae_path, agent.mdrnn_path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="an iterated run folder (holding round1/, ...)")
    p.add_argument("--before", default=None, help="the earlier round (default: the last one)")
    p.add_argument("--episodes", type=int, default=32, help="tracks each way plays")
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--fit-episodes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--backend", default="envpool")
    p.add_argument("--num-envs", type=int, default=32)
    args = p.parse_args()
    run = Path(args.run)
    rounds = sorted(run.glob("round[0-9]*"), key=lambda f: int(f.name[5:]))
    before = Path(args.before) if args.before else rounds[-1]
    old_agent = Agent.load(before, device="cpu")
    new_agent = Agent.load(run, device="cpu", which="latest")  # the run's V and M
    old_best = before / "controller" / "best.npy"
    old_params = load_params(old_best, old_agent.spec)
    new = (new_agent.policy.vae, new_agent.policy.mdrnn, new_agent.spec, run / "episodes")

    def play(name: str, agent: Agent) -> None:
        start = time.perf_counter()
        result = evaluate_agent(
            agent,
            episodes=args.episodes,
            seed=args.seed,
            num_envs=args.num_envs,
            backend=args.backend,
            progress=False,
        )
        returns = np.asarray(result.returns)
        print(
            f"{name:<44} {returns.mean():7.1f} +- {returns.std():5.1f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    print(f"{before.name}'s C on {args.episodes} tracks from seed {args.seed} ({args.backend})")
    play(f"on its own V and M ({before.name})", old_agent)
    play("on the run's V and M, as it is", with_params(new_agent, old_params))
    for n in args.fit_episodes:
        start = time.perf_counter()
        fit = refit_init(old_best, *new, episodes=n)
        took = time.perf_counter() - start
        r2 = ", ".join(f"{v:.3f}" for v in fit.r2)
        was = ", ".join(f"{v:.3f}" for v in fit.r2_unchanged)
        print(f"refit on {len(fit.episodes)} episodes ({fit.steps} steps, {took:.0f} s): R^2 {r2}")
        print(f"  (the old weights on the new inputs: R^2 {was})")
        play(f"refitted on {len(fit.episodes)} episodes", with_params(new_agent, fit.params))


if __name__ == "__main__":
    main()
