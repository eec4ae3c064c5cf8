"""The paper's temperature study: train C in the dream at several tau, score it in both worlds.

For each temperature a controller is evolved in the dream (``OUT/tau_<t>``, resumable), then
its parameters (``best.npy``) are scored in the dream at the same temperature (the paper's
"virtual score") and in the real game (the "actual score"). Results in ``OUT/sweep.json`` and
a Markdown table ``OUT/sweep.md`` (paper, Doom: tau 0.10 -> 2086 / 193; 1.00 -> 1145 / 868;
1.15 -> 918 / 1092; 1.30 -> 732 / 753).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import ControllerConfig, DreamConfig
from worldmodels.controller.train import BEST
from worldmodels.dream.env import OBS_MODE_OF, DreamEnv, load_initial_latents, run_dreams
from worldmodels.dream.train import controller_spec, train_in_dream
from worldmodels.evolution.cmaes import STATE
from worldmodels.utils.io import atomic_write_bytes, atomic_write_json


@dataclass
class SweepRow:
    temperature: float
    dream_mean: float
    dream_std: float
    real_mean: float
    real_std: float
    generations: int
    run_dir: str

    def line(self) -> str:
        return (
            f"tau {self.temperature:g}: dream {self.dream_mean:.0f} +- {self.dream_std:.0f}, "
            f"real {self.real_mean:.0f} +- {self.real_std:.0f} ({self.generations} generations)"
        )


def dream_score(
    mdrnn_path,
    series_path,
    params: np.ndarray,
    mode: str,
    dream: DreamConfig,
    n: int,
    seed: int,
    device: str = "auto",
) -> np.ndarray:
    """Returns of ``n`` dreams (from stored first frames) driven by one parameter vector."""
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.utils.device import pick_device

    mdrnn = load_mdrnn(mdrnn_path, pick_device(device))
    latents = load_initial_latents(series_path, mdrnn.z_size, mdrnn.action_size)
    spec = controller_spec(mode, mdrnn)
    rows = torch.as_tensor(params, dtype=torch.float32).expand(n, -1)
    env = DreamEnv(
        mdrnn,
        latents,
        n,
        temperature=dream.temperature,
        max_steps=dream.max_steps,
        obs_mode=OBS_MODE_OF[spec.mode],
        done_threshold=dream.done_threshold,
        seed=seed,
    )
    return run_dreams(env, rows, spec).returns.double().numpy()


def temperature_sweep(
    mdrnn_path,
    series_path,
    vae_path,
    out_dir,
    config: ControllerConfig,
    dream: DreamConfig,
    temperatures: list[float],
    dream_episodes: int = 100,
    real_episodes: int = 100,
    progress: bool = True,
    log=print,
) -> list[SweepRow]:
    """Train and score one controller per temperature; every run is resumed if it exists."""
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent

    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive numbers, got {temperatures}")
    out_dir = Path(out_dir)
    rows = []
    for tau in temperatures:
        run = out_dir / f"tau_{tau:g}"
        at_tau = dataclasses.replace(dream, temperature=tau)
        summary = train_in_dream(
            mdrnn_path,
            series_path,
            vae_path,
            run,
            config,
            at_tau,
            resume=(run / STATE).exists(),
            progress=progress,
        )
        params = np.load(run / BEST)
        dreams = dream_score(
            mdrnn_path,
            series_path,
            params,
            config.mode,
            at_tau,
            dream_episodes,
            config.seed,
            config.device,
        )
        real = evaluate_agent(
            Agent.load(run, device=config.device),
            episodes=real_episodes,
            seed=config.eval_seed,
            num_envs=config.num_envs,
            max_steps=config.max_steps,
            progress=progress,
        )
        row = SweepRow(
            tau,
            float(dreams.mean()),
            float(dreams.std()),
            real.mean,
            real.std,
            summary.generations,
            str(run),
        )
        log(row.line())
        rows.append(row)
        write_sweep(out_dir, rows, dream_episodes, real_episodes)
    return rows


def write_sweep(out_dir: Path, rows: list[SweepRow], dream_episodes: int, real_episodes: int):
    atomic_write_json(out_dir / "sweep.json", [dataclasses.asdict(r) for r in rows])
    lines = [
        "| temperature | dream score | real score | generations |",
        "|---|---|---|---|",
        *(
            f"| {r.temperature:g} | {r.dream_mean:.0f} +- {r.dream_std:.0f} "
            f"| {r.real_mean:.0f} +- {r.real_std:.0f} | {r.generations} |"
            for r in rows
        ),
        "",
        f"Dream score: {dream_episodes} dreams at the run's temperature; real score: "
        f"{real_episodes} episodes of the real game. Paper (Doom): 0.10 -> 2086 / 193, "
        "1.00 -> 1145 / 868, 1.15 -> 918 / 1092, 1.30 -> 732 / 753.",
        "",
    ]
    atomic_write_bytes(out_dir / "sweep.md", "\n".join(lines).encode())
