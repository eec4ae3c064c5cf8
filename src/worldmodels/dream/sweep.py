"""The paper's temperature study: train C in the dream at several tau, score it in both worlds.

For each temperature a controller is evolved in the dream (``OUT/tau_<t>``, resumable), then
its parameters (``best.npy``) are scored in the dream at the same temperature (the paper's
"virtual score") and in the real game (the "actual score"), saved beside it. ``OUT/sweep.json``
and the Markdown table ``OUT/sweep.md`` hold every temperature scored in OUT, so sweeps run
one after the other, or side by side, fill one table (paper, Doom: tau 0.10 -> 2086 / 193;
1.00 -> 1145 / 868; 1.15 -> 918 / 1092; 1.30 -> 732 / 753).
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
from worldmodels.utils.io import atomic_write_bytes, atomic_write_json, read_json


@dataclass
class SweepRow:
    temperature: float
    dream_mean: float
    dream_std: float
    real_mean: float
    real_std: float
    generations: int
    run_dir: str
    dream_episodes: int = 0
    real_episodes: int = 0

    def line(self) -> str:
        return (
            f"tau {self.temperature:g}: dream {self.dream_mean:.0f} +- {self.dream_std:.0f}, "
            f"real {self.real_mean:.0f} +- {self.real_std:.0f} ({self.generations} generations)"
        )


ROW = "sweep_row.json"  # in each temperature's run folder: its scores, read back on resume


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
    cluster=None,
) -> list[SweepRow]:
    """Train and score one controller per temperature; every run is resumed if it exists,
    and a temperature already scored on as many episodes is not scored again."""
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
            cluster=cluster,
        )
        row = read_row(run, summary.generations, dream_episodes, real_episodes)
        if row is None:
            dreams, real = score_run(
                run,
                mdrnn_path,
                series_path,
                config,
                at_tau,
                dream_episodes,
                real_episodes,
                progress,
                cluster,
            )
            row = SweepRow(
                tau,
                float(dreams.mean()),
                float(dreams.std()),
                real.mean,
                real.std,
                summary.generations,
                str(run),
                dream_episodes,
                real_episodes,
            )
            atomic_write_json(run / ROW, dataclasses.asdict(row))
        log(row.line())
        rows.append(row)
        write_sweep(out_dir)
    return rows


def score_run(
    run, mdrnn_path, series_path, config, dream, dream_episodes, real_episodes, progress, cluster
):
    """The paper's two figures for a run's ``best.npy``: the "virtual score" (returns of
    dreams at the run's temperature) and the "actual score" (an evaluation in the real game)."""
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent

    params = np.load(run / BEST)
    dreams = dream_score(
        mdrnn_path,
        series_path,
        params,
        config.mode,
        dream,
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
        cluster=cluster,
    )
    return dreams, real


def load_row(path: Path) -> SweepRow:
    fields = read_json(path, "sweep row")
    try:
        return SweepRow(**fields)
    except TypeError:
        raise ValueError(
            f"{path}: not a sweep row (expected the fields "
            f"{', '.join(f.name for f in dataclasses.fields(SweepRow))}); delete it to score again"
        ) from None


def read_row(run: Path, generations: int, dream_episodes: int, real_episodes: int):
    """The row an earlier sweep wrote, if it scored this same ``best.npy`` (as many
    generations) on as many episodes; else None (score again)."""
    path = run / ROW
    if not path.exists():
        return None
    row = load_row(path)
    same = (row.generations, row.dream_episodes, row.real_episodes)
    return row if same == (generations, dream_episodes, real_episodes) else None


def write_sweep(out_dir: Path) -> None:
    """``sweep.json`` and ``sweep.md`` from every temperature scored in ``out_dir``: sweeps run
    one after the other (or side by side) with other temperatures fill one table."""
    rows = sorted(
        (load_row(p) for p in out_dir.glob(f"tau_*/{ROW}")),
        key=lambda r: r.temperature,
    )
    atomic_write_json(out_dir / "sweep.json", [dataclasses.asdict(r) for r in rows])
    lines = [
        "| temperature | dream score | dreams | real score | real episodes | generations |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r.temperature:g} | {r.dream_mean:.0f} +- {r.dream_std:.0f} | {r.dream_episodes} "
            f"| {r.real_mean:.0f} +- {r.real_std:.0f} | {r.real_episodes} | {r.generations} |"
            for r in rows
        ),
        "",
        "Dream score: dreams at the run's temperature; real score: episodes of the real game. "
        "Paper (Doom): 0.10 -> 2086 / 193, 1.00 -> 1145 / 868, 1.15 -> 918 / 1092, "
        "1.30 -> 732 / 753.",
        "",
    ]
    atomic_write_bytes(out_dir / "sweep.md", "\n".join(lines).encode())
