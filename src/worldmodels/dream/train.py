"""Evolve C inside M's dream with the same CMA-ES loop as real training (``run_es``).

Fitness of a candidate = mean dream return over ``rollouts`` dreams. Every candidate's
dreams are stepped together, one batch for the whole generation (in chunks of
``DreamConfig.max_batch``), each row with its own controller parameters. All candidates of a
generation start from the same ``rollouts`` real first frames (common random numbers, as the
real trainer shares seeds). Every ``eval_every`` generations the distribution mean plays
``eval_episodes`` episodes of the *real* game (seeds ``eval_seed + i``). As in the paper, C
never learns from the real game: those scores are a monitor and ``best.npy`` is the latest
mean, unless ``DreamConfig.select_on_real`` lets them choose ``best.npy`` (as real training
does). The output folder has the layout of ``train-controller`` (``best.npy``,
``latest.npy``, ``controller.json``, ``es_state.pkl``, ``log.csv``, ``curve.png``), so
``Agent.load`` and ``worldmodels evaluate`` work on it; ``controller.json`` also records
the real environment and the dream's temperature. Resumable like real training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import ControllerConfig, DreamConfig, save_config, to_dict
from worldmodels.controller.model import ControllerSpec
from worldmodels.controller.train import (
    BEST,
    CONTROLLER_JSON,
    LATEST,
    ControllerSummary,
    es_settings,
    plot_training_curve,
    save_params,
    write_controller_json,
)
from worldmodels.dream.check import CHECK_JSON, DreamCheck, replay_in_dream
from worldmodels.dream.env import InitialLatents, dream_task, load_initial_latents
from worldmodels.dream.probe import PROBE_JSON, HeldActionProbe, probe_held_actions
from worldmodels.evolution.cmaes import STATE, ESState, run_es
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.utils.device import pick_device
from worldmodels.utils.io import atomic_write_json, read_json

DREAM_JSON = "dream.json"
# Doom: a first generation (near-random Cs) that lives more than this share of the dream's
# limit means the dream rarely kills; the 2018 code's dream: ~305 of 2,100 steps
LETHAL_SHARE = 0.5
RESUME_FIELDS = ("env", "temperature", "max_steps", "done_threshold")  # what a dream is


def check_same_dream(path: Path, dream: DreamConfig) -> None:
    """A resumed run must dream the same dream (temperature, limits, game) as it started."""
    if not path.exists():
        return
    saved = read_json(path, "dream settings")
    diffs = [
        f"{k}: {saved.get(k)} there, {getattr(dream, k)} now"
        for k in RESUME_FIELDS
        if saved.get(k) != getattr(dream, k)
    ]
    if diffs:
        raise ValueError(f"{path}: the run was started in another dream ({'; '.join(diffs)})")


@dataclass
class DreamSummary(ControllerSummary):
    """:class:`ControllerSummary` with the dream's figures (``env_steps`` are dream steps)."""

    temperature: float = 1.15
    best_dream: float = float("nan")
    check: DreamCheck | None = None  # the data's actions replayed in the dream, before CMA-ES
    probe: HeldActionProbe | None = None  # Doom: left / stay / right held, before CMA-ES
    first_generation_mean: float = float("nan")  # mean dream return of generation 1
    first_generation_warning: str | None = None

    def line(self) -> str:
        best = "not evaluated" if not np.isfinite(self.best_eval) else f"{self.best_eval:.1f}"
        warning = self.first_generation_warning
        return (
            f"{self.generations} generations in the dream (tau {self.temperature}) in "
            f"{self.seconds:.0f} s ({self.env_steps / max(self.seconds, 1e-9):.0f} dream steps/s); "
            f"generation 1's mean dream return {self.first_generation_mean:.1f}; "
            f"best real mean-eval {best}, best dream candidate {self.best_candidate:.1f}; "
            f"parameters in {self.out_dir / BEST}" + (f"; WARNING: {warning}" if warning else "")
        )


def first_generation_warning(mean_return: float, dream: DreamConfig) -> str | None:
    """Doom's dream pays +1 per step: if near-random controllers (CMA-ES's first generation)
    already live most of its limit, the dream rarely kills and C will learn to exploit it."""
    if dream.env != "doom" or not mean_return > LETHAL_SHARE * dream.max_steps:
        return None
    return (
        f"generation 1 lives {mean_return:.0f} of {dream.max_steps} dream steps on average (the "
        "2018 code's dream: ~305 of 2,100): the dream rarely kills, so C learns to exploit M "
        "(check it with dream-check --held-actions; collect data that shows where held actions "
        "lead, or train M longer)"
    )


def controller_spec(mode: str, mdrnn: MDNRNN) -> ControllerSpec:
    """C's shape for ``mode`` on top of this M: Doom's (one tanh output, no bias: the paper's
    "zch" is [z, c, h] -> 1) for an M of one action, CarRacing's otherwise."""
    if mdrnn.action_size == 1:
        return ControllerSpec.doom(mdrnn.z_size, mdrnn.hidden_size, mode)
    return ControllerSpec(z_size=mdrnn.z_size, hidden_size=mdrnn.hidden_size, mode=mode)


def dream_seed(seed: int, generation: int) -> int:
    return int(np.random.SeedSequence([seed, generation, 7]).generate_state(1)[0] >> 1)


class LocalDreams:
    """Dream tasks run one after another on this machine (``RayDreamPool``: on a cluster)."""

    parallel = 1

    def __init__(self, mdrnn: MDNRNN, latents: InitialLatents, spec, dream: DreamConfig):
        self.mdrnn, self.latents, self.spec, self.dream = mdrnn, latents, spec, dream

    def run(self, tasks: list) -> list:
        m, latents, spec, dream = self.mdrnn, self.latents, self.spec, self.dream
        results = []
        for params, episodes, seed in tasks:
            out = dream_task(m, latents, spec, dream, params, episodes, seed)
            results.append((out.returns, out.lengths, out.steps))
        return results

    def close(self) -> None:
        pass


class DreamFitness:
    """Mean dream return of each candidate; the generation's dreams batched together.

    The generation's ``pop x rollouts`` dreams are cut into tasks of at most
    ``DreamConfig.max_batch`` rows (fewer where ``runner`` runs several at once, so that each
    of its workers gets one), task k with the noise seed ``dream_seed(seed, generation) + k``.
    """

    def __init__(
        self,
        mdrnn: MDNRNN,
        latents: InitialLatents,
        spec: ControllerSpec,
        dream: DreamConfig,
        rollouts: int,
        seed: int,
        runner=None,
    ):
        self.spec, self.dream, self.rollouts, self.seed = spec, dream, rollouts, seed
        self.num_latents = len(latents.mu)
        self.runner = runner if runner is not None else LocalDreams(mdrnn, latents, spec, dream)

    def dreams(self, population: np.ndarray, generation: int):
        """Returns and lengths ``(pop, rollouts)`` and the dream steps taken."""
        pop, r = len(population), self.rollouts
        gen = np.random.default_rng([self.seed, generation])
        starts = torch.as_tensor(gen.integers(self.num_latents, size=r))  # shared by all
        params = torch.as_tensor(population, dtype=torch.float32).repeat_interleave(r, dim=0)
        episodes = starts.repeat(pop)
        rows = pop * r
        size = min(self.dream.max_batch, -(-rows // self.runner.parallel))
        first_seed = dream_seed(self.seed, generation)
        tasks = [
            (params[lo : lo + size], episodes[lo : lo + size], first_seed + k)
            for k, lo in enumerate(range(0, rows, size))
        ]
        results = self.runner.run(tasks)
        returns = torch.cat([torch.as_tensor(ret) for ret, _, _ in results]).reshape(pop, r)
        lengths = torch.cat([torch.as_tensor(n) for _, n, _ in results]).reshape(pop, r)
        return returns, lengths, sum(int(steps) for _, _, steps in results)

    def __call__(self, population: np.ndarray, generation: int):
        returns, _, steps = self.dreams(population, generation)
        return returns.double().mean(1).numpy(), steps

    def close(self) -> None:
        self.runner.close()


def train_in_dream(
    mdrnn_path: str | Path,
    series_path: str | Path,
    vae_path: str | Path,
    out_dir: str | Path,
    config: ControllerConfig,
    dream: DreamConfig,
    resume: bool = False,
    progress: bool = True,
    cluster=None,
) -> DreamSummary:
    """CMA-ES on dream returns; the distribution mean is scored in the real ``dream.env``.

    ``series_path``: the series store whose first frames start the dreams. ``vae_path``: V,
    for the real-environment evaluations and for ``Agent.load`` afterwards. ``cluster`` (a
    ``distributed.cluster.RaySettings``): the generation's dreams are split over Ray workers.
    """
    from worldmodels.execution import dream_runner
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.utils.training import summary_writer
    from worldmodels.vision.train import load_vae

    config.validate()
    dream.validate()
    if config.final_top:
        raise ValueError(
            "controller.final_top is for C evolved in the game; in the dream, "
            "dream.select_on_real chooses best.npy"
        )
    out_dir = Path(out_dir)
    device = pick_device(config.device)
    mdrnn = load_mdrnn(mdrnn_path, device)
    vae = load_vae(vae_path, device, z_size=mdrnn.z_size)
    latents = load_initial_latents(series_path, mdrnn.z_size, mdrnn.action_size)
    spec = controller_spec(config.mode, mdrnn)
    if resume:
        check_same_dream(out_dir / DREAM_JSON, dream)
    elif (out_dir / STATE).exists():  # refused before anything in the folder is rewritten
        raise ValueError(
            f"{out_dir / STATE} exists: pass resume (--resume) to continue that run, or choose "
            "another folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.json")
    save_config(dream, out_dir / DREAM_JSON)
    write_dream_controller_json(out_dir, spec, vae_path, mdrnn_path, config, dream, series_path)
    check = dream_check(out_dir / CHECK_JSON, mdrnn, series_path, dream, config.seed, progress)
    probe = None
    if dream.env == "doom":
        probe = held_action_check(
            out_dir / PROBE_JSON, mdrnn, vae, series_path, dream, config.seed, progress
        )
    runner = dream_runner(mdrnn, latents, spec, dream, cluster, mdrnn_path)
    fitness = DreamFitness(mdrnn, latents, spec, dream, config.rollouts, config.seed, runner)
    real = RealEvaluation(vae, mdrnn, spec, config, dream.env, device)
    tb = summary_writer(out_dir / "tb")

    def on_generation(state: ESState, row: dict) -> None:
        gen = state.generation
        if gen == 1 and (warning := first_generation_warning(row["mean"], dream)):
            print(f"WARNING: {warning}", flush=True)
        for key in ("best", "mean", "worst", "std", "sigma"):
            tb.add_scalar(f"dream/{key}", row[key], gen)
        tb.add_scalar("dream/steps_per_s", row["env_steps"] / row["seconds"], gen)
        if row["eval_mean"] != "":
            tb.add_scalar("real/eval_mean", row["eval_mean"], gen)
        latest = np.asarray(state.es.mean)
        save_params(out_dir / LATEST, latest)
        chosen = state.best_params if dream.select_on_real else None
        save_params(out_dir / BEST, chosen if chosen is not None else latest)
        title = f"CMA-ES in M's dream (tau {dream.temperature}); mean-eval in real {dream.env}"
        plot_training_curve(state.history, out_dir / "curve.png", title)

    settings = es_settings(config, spec, resume)
    try:
        state = run_es(
            settings,
            fitness,
            out_dir,
            evaluate=real,
            resume=resume,
            progress=progress,
            on_generation=on_generation,
        )
    finally:
        fitness.close()
        real.close()
        tb.close()
    first_mean = float(state.history[0]["mean"]) if state.history else float("nan")
    return DreamSummary(
        generations=state.generation,
        best_eval=state.best_eval,
        best_candidate=state.best_candidate_fitness,
        seconds=state.seconds,
        env_steps=int(sum(row["env_steps"] for row in state.history)),
        out_dir=out_dir,
        temperature=dream.temperature,
        best_dream=max((row["best"] for row in state.history), default=float("nan")),
        check=check,
        probe=probe,
        first_generation_mean=first_mean,
        first_generation_warning=first_generation_warning(first_mean, dream),
    )


def dream_check(path: Path, mdrnn, series_path, dream: DreamConfig, seed: int, progress: bool):
    """:func:`replay_in_dream` before training (seeded: a resumed run gets the same figures)."""
    check = replay_in_dream(mdrnn, series_path, dream, seed=seed)
    atomic_write_json(path, check.to_dict())
    if progress or check.warning():
        print(check.line(), flush=True)
    return check


def held_action_check(
    path: Path, mdrnn, vae, series_path, dream: DreamConfig, seed: int, progress: bool
):
    """Doom: :func:`probe_held_actions` before training (seeded, as :func:`dream_check`), the
    table printed when it warns: a held direction that outlives the game's in the dream is what
    CMA-ES finds first."""
    probe = probe_held_actions(mdrnn, vae, series_path, dream, seed=seed)
    atomic_write_json(path, probe.to_dict())
    if progress or probe.warnings():
        print(probe.table(), flush=True)
    return probe


class RealEvaluation:
    """The distribution mean in the real game: ``eval_episodes`` full episodes, fixed seeds.

    The environments (worker processes) start at the first evaluation and stay until close.
    """

    def __init__(self, vae, mdrnn, spec, config: ControllerConfig, env: str, device):
        self.vae, self.mdrnn, self.spec, self.config = vae, mdrnn, spec, config
        self.env_name, self.device = env, device
        self.engine = None

    def __call__(self, params: np.ndarray) -> np.ndarray:
        from worldmodels.controller.rollout import RolloutEngine

        if self.engine is None:
            policy, env = real_policy_and_env(
                self.vae, self.mdrnn, self.spec, self.config, self.env_name, self.device
            )
            self.engine = RolloutEngine(policy, env)
        jobs = [(0, self.config.eval_seed + i) for i in range(self.config.eval_episodes)]
        return self.engine.run(params[None], jobs).returns

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def real_policy_and_env(vae, mdrnn, spec, config: ControllerConfig, env: str, device):
    """V + M + C for the real game, and a batch of its environments."""
    from worldmodels.controller.policy import WorldModelPolicy
    from worldmodels.envs import make_vec_env

    vec = make_vec_env(
        env,
        backend=config.backend,
        num_envs=min(config.num_envs, config.eval_episodes),
        max_steps=config.max_steps,
        seed=config.eval_seed,
        workers=config.workers,
        quiet=True,
    )
    policy = WorldModelPolicy(
        vae, mdrnn, spec, device, z_mode=config.z_mode, preprocess=vec.preprocess, bf16=config.bf16
    )
    return policy, vec


def write_dream_controller_json(
    out_dir: Path,
    spec: ControllerSpec,
    vae_path,
    mdrnn_path,
    config: ControllerConfig,
    dream: DreamConfig,
    series_path,
) -> None:
    """``train-controller``'s controller.json plus the real env and how C was trained."""
    write_controller_json(out_dir, spec, vae_path, mdrnn_path, config)
    info = read_json(out_dir / CONTROLLER_JSON, "controller description")
    info.update(
        env=dream.env,
        trained_in="dream",
        dream=to_dict(dream),
        series=str(Path(series_path).resolve()),
    )
    atomic_write_json(out_dir / CONTROLLER_JSON, info)
