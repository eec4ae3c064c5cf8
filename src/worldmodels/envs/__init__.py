"""Environments: one factory for batches of CarRacing (gymnasium or EnvPool) and Doom
(ViZDoom) environments, all with the same contract (see ``carracing.VecCarRacing``).

The factory lives here, above both environment modules, so that neither imports the other.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worldmodels.envs.carracing import VecCarRacing

ENV_IDS = {"carracing": "CarRacing-v3", "doom": "VizdoomTakeCover-v1"}
BACKENDS = ("auto", "gymnasium", "envpool")
DEFAULT_MAX_STEPS = 1000  # CarRacing's episode length


def envpool_available() -> bool:
    return importlib.util.find_spec("envpool") is not None


def resolve_backend(name: str, quiet: bool = False, env: str = "carracing") -> str:
    """Map ``auto`` to ``envpool`` when installed, else ``gymnasium`` (with a one-line notice).

    Doom has one backend, ViZDoom's gymnasium wrapper: ``auto`` means ``gymnasium`` there.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if env == "doom":
        if name == "envpool":
            raise ValueError("env 'doom' runs on ViZDoom's gymnasium wrapper, not on envpool")
        return "gymnasium"
    if name == "envpool" and not envpool_available():
        raise RuntimeError(
            "backend 'envpool' is not installed; `pip install -e .[envpool]` (Linux x86-64 only)"
        )
    if name != "auto":
        return name
    if envpool_available():
        return "envpool"
    if not quiet:
        print(
            "notice: envpool is not installed, using the slower gymnasium backend "
            "(`pip install -e .[envpool]` on Linux x86-64 for ~10x faster CarRacing)",
            file=sys.stderr,
        )
    return "gymnasium"


def env_id_for(env: str) -> str:
    try:
        return ENV_IDS[env]
    except KeyError:
        raise ValueError(f"unknown env {env!r}; choose one of {', '.join(ENV_IDS)}") from None


def preprocess_for(env: str):
    """The raw-frame preprocessing of a game (each env class brings its own)."""
    env_id_for(env)  # unknown names are an error naming the choices
    if env == "doom":
        from worldmodels.envs.doom import preprocess_doom_frames

        return preprocess_doom_frames
    from worldmodels.envs.preprocess import preprocess_frames

    return preprocess_frames


def make_vec_env(
    env: str = "carracing",
    backend: str = "auto",
    num_envs: int = 1,
    max_steps: int = DEFAULT_MAX_STEPS,
    seed: int = 0,
    workers: int | None = None,
    quiet: bool = False,
) -> VecCarRacing:
    """The one factory for batches of environments.

    ``seed`` seeds EnvPool's pool at make. ``workers`` is the number of gymnasium subprocesses
    (default: one per core, at most one per env; 0 runs them in this process) or of EnvPool
    threads (default or 0: EnvPool's choice).
    """
    env_id_for(env)
    backend = resolve_backend(backend, quiet=quiet, env=env)
    if env == "doom":
        from worldmodels.envs.doom import VecDoom

        return VecDoom(num_envs, max_steps, workers=workers)
    from worldmodels.envs.carracing import EnvPoolCarRacing, GymnasiumCarRacing

    if backend == "envpool":
        return EnvPoolCarRacing(num_envs, max_steps, seed=seed, num_threads=workers or 0)
    return GymnasiumCarRacing(num_envs, max_steps, workers=workers)
