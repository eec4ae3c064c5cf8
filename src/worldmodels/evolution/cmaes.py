"""CMA-ES over a flat parameter vector (pycma ask/tell), checkpointed every generation.

The loop knows nothing of cars: it asks pycma for a population, hands it to a ``fitness``
function (the local rollout engine, or Ray actors), tells pycma the negated fitness (pycma
minimises), and every ``eval_every`` generations scores the distribution mean with
``evaluate``. After each generation the whole ES state is pickled atomically, so a killed run
resumed with ``resume=True`` loses at most the generation in flight.
"""

from __future__ import annotations

import csv
import io
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cma
import numpy as np
from tqdm import tqdm

from worldmodels.utils.io import atomic_write, atomic_write_bytes

STATE = "es_state.pkl"
LOG_FIELDS = [
    "generation",
    "best",
    "mean",
    "worst",
    "std",
    "eval_mean",
    "eval_std",
    "env_steps",
    "seconds",
    "sigma",
]

FitnessFn = Callable[[np.ndarray, int], tuple[np.ndarray, int]]
"""(population (pop, P), generation) -> (fitness (pop,), env steps used)."""
EvaluateFn = Callable[[np.ndarray], np.ndarray]
"""(parameters (P,)) -> returns of the evaluation episodes."""


@dataclass
class ESSettings:
    num_params: int
    popsize: int = 64
    sigma0: float = 0.1
    generations: int = 1800
    time_budget_s: float | None = None
    weight_decay: float = 0.0
    eval_every: int = 25
    seed: int = 0

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed."""
        return {
            "num_params": self.num_params,
            "popsize": self.popsize,
            "sigma0": self.sigma0,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }


@dataclass
class ESState:
    es: cma.CMAEvolutionStrategy
    settings: dict
    generation: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_params: np.ndarray | None = None  # the mean with the best evaluation so far
    best_eval: float = -np.inf
    best_candidate: np.ndarray | None = None  # the single best training candidate so far
    best_candidate_fitness: float = -np.inf


def new_state(settings: ESSettings) -> ESState:
    options = {"popsize": settings.popsize, "seed": settings.seed + 1, "verbose": -9}
    es = cma.CMAEvolutionStrategy(np.zeros(settings.num_params), settings.sigma0, options)
    return ESState(es=es, settings=settings.identity())


def save_state(state: ESState, out_dir: Path) -> None:
    atomic_write_bytes(out_dir / STATE, pickle.dumps(state))


def load_state(out_dir: Path, settings: ESSettings) -> ESState:
    path = out_dir / STATE
    if not path.exists():
        raise FileNotFoundError(f"no CMA-ES checkpoint to resume: {path}")
    try:
        state = pickle.loads(path.read_bytes())
    except Exception as e:
        raise ValueError(f"CMA-ES checkpoint {path} is corrupt: {e}") from None
    if not isinstance(state, ESState):
        raise ValueError(f"{path} is not a CMA-ES checkpoint of this package")
    if state.settings != settings.identity():
        diffs = {
            k: (state.settings.get(k), v)
            for k, v in settings.identity().items()
            if state.settings.get(k) != v
        }
        raise ValueError(
            f"CMA-ES checkpoint {path} was made with other settings "
            f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in diffs.items())})"
        )
    return state


def write_log(state: ESState, out_dir: Path) -> None:
    def write(f):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(state.history)
        f.write(text.getvalue().encode())

    atomic_write(out_dir / "log.csv", write)


def run_es(
    settings: ESSettings,
    fitness: FitnessFn,
    out_dir: str | Path,
    evaluate: EvaluateFn | None = None,
    resume: bool = False,
    progress: bool = True,
    on_generation: Callable[[ESState, dict], None] | None = None,
) -> ESState:
    """Evolve until ``settings.generations`` (or the time budget) is reached; returns the state."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        state = load_state(out_dir, settings)
    elif (out_dir / STATE).exists():
        raise FileExistsError(
            f"{out_dir / STATE} exists: pass resume to continue it, or choose another folder"
        )
    else:
        state = new_state(settings)
    bar = tqdm(
        total=settings.generations,
        initial=state.generation,
        desc="cma-es",
        unit="gen",
        disable=not progress,
    )
    try:
        while state.generation < settings.generations:
            if settings.time_budget_s is not None and state.seconds >= settings.time_budget_s:
                break
            row = _generation(state, settings, fitness, evaluate)
            save_state(state, out_dir)
            write_log(state, out_dir)
            if on_generation is not None:
                on_generation(state, row)
            bar.update(1)
            bar.set_postfix(
                best=f"{row['best']:.1f}",
                mean=f"{row['mean']:.1f}",
                eval=_fmt(state.best_eval),
                sps=f"{row['env_steps'] / row['seconds']:.0f}",
            )
    finally:
        bar.close()
    return state


def _generation(
    state: ESState, settings: ESSettings, fitness: FitnessFn, evaluate: EvaluateFn | None
) -> dict:
    start = time.perf_counter()
    population = np.asarray(state.es.ask())
    scores, env_steps = fitness(population, state.generation)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(population),) or not np.isfinite(scores).all():
        raise ValueError(f"fitness returned {scores!r} for a population of {len(population)}")
    # weight decay penalises large weights: subtract it from the fitness we maximise
    penalised = scores - settings.weight_decay * np.mean(population**2, axis=1)
    state.es.tell(list(population), list(-penalised))  # pycma minimises
    top = int(np.argmax(scores))
    if scores[top] > state.best_candidate_fitness:
        state.best_candidate, state.best_candidate_fitness = (
            population[top].copy(),
            float(scores[top]),
        )
    state.generation += 1
    row = {
        "generation": state.generation,
        "best": scores.max(),
        "mean": scores.mean(),
        "worst": scores.min(),
        "std": scores.std(),
        "eval_mean": "",
        "eval_std": "",
        "env_steps": env_steps,
        "sigma": state.es.sigma,
    }
    if evaluate is not None and settings.eval_every and state.generation % settings.eval_every == 0:
        mean_params = np.asarray(state.es.mean).copy()
        returns = np.asarray(evaluate(mean_params), dtype=np.float64)
        row["eval_mean"], row["eval_std"] = returns.mean(), returns.std()
        if returns.mean() > state.best_eval:
            state.best_eval, state.best_params = float(returns.mean()), mean_params
    row["seconds"] = time.perf_counter() - start
    state.seconds += row["seconds"]
    state.history.append(row)
    return row


def _fmt(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1f}"
