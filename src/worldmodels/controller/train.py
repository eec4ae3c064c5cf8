"""Evolve C with CMA-ES on real environments through the batched rollout engine.

Fitness of a candidate = mean return over ``rollouts`` episodes. All candidates of one
generation play the same ``rollouts`` seeds, on either backend (common random numbers: the
ranking compares controllers, not track luck). Every ``eval_every`` generations the
distribution mean plays ``eval_episodes`` fixed selection seeds with no early stop; the best of
those means is ``best.npy``, what ``Agent.load`` and ``evaluate`` use. With ``final_top`` the
best few of those means then play ``final_episodes`` more selection seeds and ``best.npy`` is
the one with the best mean over all of them (``selection.json`` says how each did).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from worldmodels.config import ControllerConfig, save_config
from worldmodels.controller.model import ControllerSpec
from worldmodels.controller.policy import WorldModelPolicy
from worldmodels.envs import preprocess_for
from worldmodels.evolution.cmaes import ESSettings, ESState, run_es
from worldmodels.execution import rollout_engine
from worldmodels.utils.device import pick_device
from worldmodels.utils.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    file_digest_of,
    read_json,
)

CONTROLLER_JSON = "controller.json"
BEST = "best.npy"
LATEST = "latest.npy"
SELECTION_JSON = "selection.json"


@dataclass
class ControllerSummary:
    generations: int
    best_eval: float
    best_candidate: float
    seconds: float
    env_steps: int
    out_dir: Path
    selection: dict | None = None  # the final selection's record (selection.json)

    def line(self) -> str:
        best = "not evaluated" if not np.isfinite(self.best_eval) else f"{self.best_eval:.1f}"
        chosen = ""
        if self.selection is not None:
            row = chosen_row(self.selection)
            gen = row["generation"]
            which = f"the mean of generation {gen}" if gen else "the warm start (init)"
            chosen = (
                f"; final selection: {which}, "
                f"{row['selection_mean']:.1f} over {row['episodes']} selection tracks"
            )
            if "gain_over_start" in self.selection:
                s = self.selection
                chosen += (
                    f" (the best mean's gain over the start on the final tracks "
                    f"{s['gain_over_start']:+.1f}, SE {s['gain_se']:.1f}; "
                    f"margin {s['margin']:g} SE)"
                )
        return (
            f"{self.generations} generations in {self.seconds:.0f} s "
            f"({self.env_steps / max(self.seconds, 1e-9):.0f} env steps/s); best mean-eval {best}, "
            f"best candidate {self.best_candidate:.1f}{chosen}; parameters in {self.out_dir / BEST}"
        )


# Training tracks are seeds in [2**30, 2**31) (gymnasium wants < 2**31); selection (the
# mean-evals, ControllerConfig.eval_seed) and scoring (EvalConfig.seed) use small seeds, so
# no track used for training is ever used to choose best.npy or to score it.
TRAIN_SEED_BASE = 2**30


def generation_seeds(seed: int, generation: int, rollouts: int) -> list[int]:
    """The ``rollouts`` tracks every candidate of ``generation`` plays (common random numbers)."""
    state = np.random.SeedSequence([seed, generation]).generate_state(rollouts)
    return [TRAIN_SEED_BASE + int(s >> 2) for s in state]


def generation_jobs(
    config: ControllerConfig, generation: int, popsize: int, replay: list[int] | None = None
):
    """(candidate, seed) jobs, candidate-major: ``rollouts`` per candidate, on the same seeds
    for every candidate with ``common_seeds``, else on seeds of each candidate's own. With
    ``replay`` (``replay_hard`` tracks, ``hard_tracks``) the generation's last rollouts play
    those tracks instead of fresh ones.

    With ``mirror_tracks`` a job is (candidate, seed, mirrored): rollout k of generation g is
    played mirrored when k + g is odd (every other track; every other generation's one track
    at 1 rollout), the same for every candidate."""
    if config.common_seeds:
        seeds = generation_seeds(config.seed, generation, config.rollouts)
        if replay:
            seeds[len(seeds) - len(replay) :] = replay
        jobs = [(c, s) for c in range(popsize) for s in seeds]
    else:
        seeds = generation_seeds(config.seed, generation, popsize * config.rollouts)
        jobs = [(j // config.rollouts, s) for j, s in enumerate(seeds)]
    if not config.mirror_tracks:
        return jobs
    return [(c, s, (j % config.rollouts + generation) % 2 == 1) for j, (c, s) in enumerate(jobs)]


# hard-track replay (``replay_hard``) chooses among the fresh tracks of this many generations
REPLAY_WINDOW = 10
TRACKS_JSON = "tracks.json"


def hard_tracks(ledger: list[dict], generation: int, k: int) -> list[int]:
    """The ``k`` tracks generation ``generation`` replays: of the fresh tracks played in the
    ``REPLAY_WINDOW`` generations before it and not replayed yet, those with the lowest
    population mean (fewer while there are fewer). ``ledger``: ``TrackLedger.entries``."""
    before = [e for e in ledger if e["generation"] < generation]
    replayed = {e["seed"] for e in before if e["replay"]}
    pool = [
        e
        for e in before
        if not e["replay"]
        and e["generation"] >= generation - REPLAY_WINDOW
        and e["seed"] not in replayed
    ]
    return [e["seed"] for e in sorted(pool, key=lambda e: e["mean"])[:k]]


class TrackLedger:
    """Every training track played with ``replay_hard``: generation, seed, the population's
    mean return on it and whether it was a replay, kept in ``tracks.json`` so that a resumed
    run replays the tracks it would have replayed (what a generation replays depends only on
    the generations before it)."""

    def __init__(self, out_dir: Path, resume: bool):
        self.path = out_dir / TRACKS_JSON
        self.entries: list[dict] = []
        if resume and self.path.exists():
            entries = read_json(self.path, "hard-track replay record")
            if not isinstance(entries, list) or not all(
                isinstance(e, dict) and {"generation", "seed", "mean", "replay"} <= e.keys()
                for e in entries
            ):
                raise ValueError(
                    f"hard-track replay record {self.path} is corrupt: expected a list of "
                    "{generation, seed, mean, replay} entries"
                )
            self.entries = entries

    def record(self, generation: int, seeds: list[int], means: np.ndarray, replay: list[int]):
        """The tracks ``generation`` played; a generation played again (a resume after its
        fitness, before its checkpoint) replaces its entries, and every later one's."""
        self.entries = [e for e in self.entries if e["generation"] < generation]
        self.entries += [
            {"generation": generation, "seed": s, "mean": float(m), "replay": s in replay}
            for s, m in zip(seeds, means, strict=True)
        ]
        atomic_write_json(self.path, self.entries)


def save_params(path: Path, params: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.asarray(params, np.float64)))


def train_controller(
    vae_path: str | Path,
    mdrnn_path: str | Path | None,
    out_dir: str | Path,
    config: ControllerConfig,
    resume: bool = False,
    progress: bool = True,
    cluster=None,
    episodes_path: str | Path | None = None,
) -> ControllerSummary:
    """``cluster`` (a ``distributed.cluster.RaySettings``): run the rollouts on Ray workers.
    ``episodes_path``: the episodes ``config.refit_init`` refits the warm start on."""
    from worldmodels.memory.train import load_mdrnn
    from worldmodels.utils.training import summary_writer
    from worldmodels.vision.train import load_vae

    config.validate()
    out_dir = Path(out_dir)
    device = pick_device(config.device)
    vae = load_vae(vae_path, device)
    mdrnn = load_mdrnn(mdrnn_path, device) if config.mode in ("zh", "zch") else None
    hidden = mdrnn.hidden_size if mdrnn is not None else 256
    if config.env == "doom":
        spec = ControllerSpec.doom(vae.z_size, hidden, config.mode)
    else:
        spec = ControllerSpec(z_size=vae.z_size, hidden_size=hidden, mode=config.mode)
    policy = WorldModelPolicy(
        vae,
        mdrnn,
        spec,
        device,
        z_mode=config.z_mode,
        preprocess=preprocess_for(config.env),
        bf16=config.bf16,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.json")
    write_controller_json(out_dir, spec, vae_path, mdrnn_path, config)
    if config.refit_init and config.init is not None:
        config = replace(
            config, init=str(refitted_init(config, vae, mdrnn, spec, episodes_path, out_dir))
        )
    engine = rollout_engine(
        policy,
        env=config.env,
        backend=config.backend,
        num_envs=config.num_envs,
        max_steps=config.max_steps,
        seed=config.seed,
        workers=config.workers,
        groups=config.env_groups,
        cluster=cluster,
        vae_path=vae_path,
        mdrnn_path=mdrnn_path,
    )

    ledger = TrackLedger(out_dir, resume) if config.replay_hard else None

    def fitness(population: np.ndarray, generation: int):
        replay = hard_tracks(ledger.entries, generation, config.replay_hard) if ledger else None
        jobs = generation_jobs(config, generation, len(population), replay)
        result = engine.run(population, jobs, early_stop=config.early_stop)
        returns = result.returns.reshape(len(population), config.rollouts)
        if ledger is not None:
            seeds = [seed for _, seed in jobs[: config.rollouts]]
            ledger.record(generation, seeds, returns.mean(0), replay)
        return returns.mean(1), result.env_steps

    def evaluate(params: np.ndarray) -> np.ndarray:
        jobs = [(0, config.eval_seed + i) for i in range(config.eval_episodes)]
        return engine.run(params[None], jobs).returns

    tb = summary_writer(out_dir / "tb")

    def on_generation(state: ESState, row: dict) -> None:
        gen = state.generation
        for key in ("best", "mean", "worst", "std", "sigma"):
            tb.add_scalar(f"es/{key}", row[key], gen)
        tb.add_scalar("es/env_steps_per_s", row["env_steps"] / row["seconds"], gen)
        if row["eval_mean"] != "":
            tb.add_scalar("es/eval_mean", row["eval_mean"], gen)
        latest = np.asarray(state.es.mean)
        save_params(out_dir / LATEST, latest)
        save_params(out_dir / BEST, state.best_params if state.best_params is not None else latest)
        plot_training_curve(state.history, out_dir / "curve.png")

    settings = es_settings(config, spec, resume)
    try:
        state = run_es(
            settings,
            fitness,
            out_dir,
            evaluate=evaluate,
            resume=resume,
            progress=progress,
            on_generation=on_generation,
        )
        selection = final_selection(state, engine, config, out_dir, spec)
    finally:
        engine.close()
        tb.close()
    env_steps = int(sum(row["env_steps"] for row in state.history))
    return ControllerSummary(
        state.generation,
        state.best_eval,
        state.best_candidate_fitness,
        state.seconds,
        env_steps,
        out_dir,
        selection,
    )


def final_selection_seeds(config: ControllerConfig) -> list[int]:
    """The selection tracks after the mean-evals' (never training or scoring tracks)."""
    return list(config.selection_seeds())[config.eval_episodes :]


def final_selection(state: ESState, engine, config: ControllerConfig, out_dir: Path, spec=None):
    """Replay the ``final_top`` best evaluated means on ``final_episodes`` more selection
    tracks, all on the same tracks, and save as ``best.npy`` the one with the best mean over
    every selection track it played. A warm start (``config.init``, read with ``spec``)
    competes too, as generation 0, on every selection track: CMA-ES keeps it unless that mean
    beats it on the final tracks by more than ``config.init_margin`` standard errors
    (``choose_candidate``). Returns the record written to ``selection.json``, or None when
    there is no final selection. Done once: a rerun with the same candidates reuses its
    returns (the choice is made again: ``init_margin`` may have changed)."""
    if not config.final_top:
        return None
    if not state.evaluated and any(row["eval_mean"] != "" for row in state.history):
        print(
            f"warning: {out_dir / 'es_state.pkl'} was made before evaluated means were kept: "
            "no final selection, best.npy is the best mean-eval"
        )
        return None
    ranked = sorted(state.evaluated, key=lambda e: float(np.mean(e["returns"])), reverse=True)
    candidates = [
        (int(e["generation"]), e["params"], e["returns"]) for e in ranked[: config.final_top]
    ]
    seeds = final_selection_seeds(config)
    key = {"generations": [c[0] for c in candidates], "seeds": [seeds[0], seeds[-1]]}
    if config.init is not None:
        from worldmodels.agent import load_params

        candidates.append((0, load_params(Path(config.init), spec), None))
        key["generations"].append(0)
        key["init"] = file_digest_of([Path(config.init)])
    if not candidates:
        return None
    path = out_dir / SELECTION_JSON
    record = read_json(path, "final selection") if path.exists() else None
    if record is None or {k: record.get(k) for k in key} != key:
        start = time.perf_counter()
        every_seed = list(config.selection_seeds())  # a warm start has no mean-eval yet
        played = [seeds if returns is not None else every_seed for _, _, returns in candidates]
        jobs = [(c, s) for c, tracks in enumerate(played) for s in tracks]
        params = np.stack([c[1] for c in candidates])
        more = engine.run(params, jobs).returns
        rows, offset = [], 0
        for (generation, _, returns), tracks in zip(candidates, played, strict=True):
            new = more[offset : offset + len(tracks)]
            offset += len(tracks)
            eval_returns = returns if returns is not None else new[: config.eval_episodes]
            final = new[-len(seeds) :]
            every = np.concatenate([eval_returns, final])
            rows.append(
                {
                    "generation": generation,
                    "mean_eval": float(np.mean(eval_returns)),
                    "final_mean": float(final.mean()),
                    "selection_mean": float(every.mean()),
                    "selection_std": float(every.std()),
                    "episodes": len(every),
                    "returns": every.tolist(),  # per track, in the order of selection_seeds()
                }
            )
        record = {**key, "candidates": rows, "seconds": time.perf_counter() - start}
    if "returns" in record["candidates"][0]:  # a record made before returns were kept: as is
        choice = choose_candidate(record["candidates"], len(seeds), config.init_margin)
        if any(record.get(k) != v for k, v in choice.items()):  # new, or another margin
            record.update(choice)
            atomic_write_json(path, record)
    params = next(c[1] for c in candidates if c[0] == record["chosen"])
    save_params(out_dir / BEST, params)
    return record


def choose_candidate(rows: list[dict], final_episodes: int, margin: float) -> dict:
    """The final selection's choice among its ``rows``: the best mean over every selection
    track (a tie keeps the later generation). A warm start (generation 0) gives way to it only
    where the mean's gain on the final tracks, which chose no candidate, passes ``margin``
    standard errors of the per-track difference: a gain within the noise of ~64 tracks is
    often a faster agent that crashes more, which a mean over a hundred tracks cannot see."""
    best = max(
        (r for r in rows if r["generation"] != 0),
        key=lambda r: (r["selection_mean"], r["generation"]),
        default=None,
    )
    start = next((r for r in rows if r["generation"] == 0), None)
    if start is None or best is None:
        return {"chosen": (best or start)["generation"]}
    diff = np.subtract(best["returns"], start["returns"])[-final_episodes:]
    gain = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    beats = gain > margin * se
    return {
        "chosen": best["generation"] if beats else 0,
        "gain_over_start": gain,
        "gain_se": se,
        "margin": margin,
    }


def chosen_row(record: dict) -> dict:
    return next(r for r in record["candidates"] if r["generation"] == record["chosen"])


def write_controller_json(
    out_dir: Path, spec: ControllerSpec, vae_path, mdrnn_path, config: ControllerConfig
) -> None:
    """Everything Agent.load needs: the spec, and where V and M are (relative when possible)."""

    def rel(p):
        if p is None:
            return None
        p = Path(p).resolve()
        try:
            return str(p.relative_to(out_dir.resolve().parent))
        except ValueError:
            return str(p)

    atomic_write_json(
        out_dir / CONTROLLER_JSON,
        {
            "spec": spec.to_dict(),
            "vae": rel(vae_path),
            "mdrnn": rel(mdrnn_path),
            "z_mode": config.z_mode,
            "env": config.env,
            "relative_to": "..",
        },
    )


REFIT_INIT = "init.npy"  # the warm start refitted onto this V and M (refit_init)
REFIT_JSON = "refit.json"


def refitted_init(config, vae, mdrnn, spec, episodes_path, out_dir: Path) -> Path:
    """``config.init`` refitted onto ``vae`` and ``mdrnn`` (controller/refit.py), made once and
    kept in ``out_dir`` (a resume, and the final selection's warm start, read the same)."""
    from worldmodels.controller.refit import refit_init

    path = out_dir / REFIT_INIT
    if path.exists():
        return path
    if episodes_path is None:
        raise ValueError("refit_init needs the episodes to refit the warm start on")
    result = refit_init(config.init, vae, mdrnn, spec, episodes_path)
    atomic_write_json(out_dir / REFIT_JSON, {"init": str(config.init), **result.record()})
    save_params(path, result.params)
    return path


def es_settings(config: ControllerConfig, spec: ControllerSpec, resume: bool = False) -> ESSettings:
    """The CMA-ES loop's settings from a controller config (real or dream fitness alike).
    ``init`` is read on a fresh start only: a resumed run continues its saved mean."""
    from worldmodels.agent import load_params

    fresh_init = config.init is not None and not resume
    return ESSettings(
        num_params=spec.num_params,
        x0=load_params(Path(config.init), spec) if fresh_init else None,
        popsize=config.popsize,
        sigma0=config.sigma0,
        generations=config.generations,
        time_budget_s=config.time_budget_s,
        weight_decay=config.weight_decay,
        eval_every=config.eval_every,
        seed=config.seed,
    )


def plot_training_curve(
    history: list[dict], path: Path, title: str = "CMA-ES on CarRacing"
) -> None:
    """Best, mean and worst fitness per generation, and the mean-eval points, like the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [r["generation"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(gens, [r["best"] for r in history], label="best", color="tab:green", lw=1)
    ax.plot(gens, [r["mean"] for r in history], label="mean", color="tab:blue", lw=1)
    ax.plot(gens, [r["worst"] for r in history], label="worst", color="tab:red", lw=1)
    evals = [
        (r["generation"], r["eval_mean"], r["eval_std"]) for r in history if r["eval_mean"] != ""
    ]
    if evals:
        g, m, s = map(np.asarray, zip(*evals, strict=True))
        ax.errorbar(g, m, yerr=s, fmt="o", color="black", ms=3, capsize=2, label="mean-eval")
    ax.set_xlabel("generation")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")  # the mean-eval points can sit anywhere
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def set_agent_from(out_dir: Path, run: str | None) -> None:
    """Make another run folder's agent (``run``, relative to this one's run folder) the one
    ``Agent.load`` gives for this folder's ``best``, or this folder's own again (None)."""
    info = read_controller_json(out_dir)
    info.pop("agent_from", None)
    if run is not None:
        info["agent_from"] = run
    atomic_write_json(out_dir / CONTROLLER_JSON, info)


def read_controller_json(folder: Path) -> dict:
    data = read_json(folder / CONTROLLER_JSON, "controller description")
    if not isinstance(data, dict) or "spec" not in data:
        raise ValueError(f"{folder / CONTROLLER_JSON}: not a controller description")
    return data
