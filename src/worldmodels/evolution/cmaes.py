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
    x0: np.ndarray | None = None  # the first mean (None: zeros)

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
    # every evaluated mean: {"generation", "params", "returns"} (for a final selection)
    evaluated: list[dict] = field(default_factory=list)


def new_state(settings: ESSettings) -> ESState:
    options = {"popsize": settings.popsize, "seed": settings.seed + 1, "verbose": -9}
    x0 = np.zeros(settings.num_params) if settings.x0 is None else settings.x0
    es = cma.CMAEvolutionStrategy(np.array(x0, np.float64), settings.sigma0, options)
    return ESState(es=es, settings=settings.identity())


def save_state(state: ESState, out_dir: Path) -> None:
    atomic_write_bytes(out_dir / STATE, pickle.dumps(state))


def load_state(out_dir: Path, settings: ESSettings) -> ESState:
    path = out_dir / STATE
    if not path.exists():
        raise FileNotFoundError(f"no CMA-ES checkpoint to resume: {path}")
    try:
        state = safe_loads(path.read_bytes())
    except ForeignObjectError as e:
        raise ValueError(f"CMA-ES checkpoint {path} refused: {e}") from None
    except Exception as e:
        raise ValueError(f"CMA-ES checkpoint {path} is corrupt: {e}") from None
    if not isinstance(state, ESState):
        raise ValueError(f"{path} is not a CMA-ES checkpoint of this package")
    if not hasattr(state, "evaluated"):  # a checkpoint from before evaluated means were kept
        state.evaluated = []
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


class ForeignObjectError(pickle.UnpicklingError):
    """A checkpoint asked for something outside pycma's and numpy's own state."""


def _safe_getattr(obj, name: str):
    """getattr as pycma's pickles use it (a public attribute of one of its own objects)."""
    module = type(obj).__module__ or ""
    if name.startswith("_") or not module.startswith(("cma.", "numpy")):
        raise ForeignObjectError(
            f"it asks for attribute {name!r} of a {module}.{type(obj).__qualname__}"
        )
    return getattr(obj, name)


# the only callables a checkpoint may call while loading: numpy's array, scalar, dtype and
# random-state rebuilders, and the checked getattr. pycma's classes are rebuilt without
# calling their constructors (which evaluate option strings), as pickle does for them.
_NUMPY_REBUILDERS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.linalg", "eigh"),  # pycma keeps a reference to its eigen solver
}
# plain data types a state may hold (calling them builds data, nothing else)
_PLAIN_DATA = {
    ("builtins", name)
    for name in ("range", "slice", "complex", "set", "frozenset", "bytearray", "bytes")
} | {("collections", "OrderedDict"), ("collections", "deque")}


class _CheckpointUnpickler(pickle._Unpickler):
    """Unpickles only this package's ``ESState``, pycma's classes and numpy's arrays and
    random states; anything else (a function of another module, a class called with
    arguments, a private attribute) is refused, named, before it can run."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("builtins", "getattr"):
            return _safe_getattr
        if (module, name) == (__name__, "ESState"):
            return ESState
        if (module, name) in _NUMPY_REBUILDERS | _PLAIN_DATA:
            return super().find_class(module, name)
        if module.startswith("cma.") and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type) or name in ("_pass", "is_feasible"):
                return found
        raise ForeignObjectError(f"it asks for {module}.{name}, which is not pycma or numpy state")

    def load_reduce(self):
        func = self.stack[-2]
        allowed = func is _safe_getattr or (
            (getattr(func, "__module__", None), getattr(func, "__name__", None))
            in _NUMPY_REBUILDERS | _PLAIN_DATA
            and func is not np.linalg.eigh
        )
        if not allowed:
            raise ForeignObjectError(f"it asks to call {_name_of(func)}")
        super().load_reduce()

    def _refuse_instantiation(self):
        raise ForeignObjectError("it asks to call a class with arguments (INST/OBJ opcode)")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.INST[0]] = _refuse_instantiation
    dispatch[pickle.OBJ[0]] = _refuse_instantiation


def _name_of(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def safe_loads(data: bytes):
    """Load a CMA-ES checkpoint without running anything but numpy's and pycma's own state
    rebuilding: a run folder made by someone else is data, not code."""
    return _CheckpointUnpickler(io.BytesIO(data)).load()


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
        state.evaluated.append(
            {"generation": state.generation, "params": mean_params, "returns": returns}
        )
        if returns.mean() > state.best_eval:
            state.best_eval, state.best_params = float(returns.mean()), mean_params
    row["seconds"] = time.perf_counter() - start
    state.seconds += row["seconds"]
    state.history.append(row)
    return row


def _fmt(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1f}"
