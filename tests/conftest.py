"""Shared fixtures: small stores of real CarRacing episodes, collected once per test session."""

from __future__ import annotations

import pytest
import torch

from worldmodels.config import CollectConfig
from worldmodels.envs import resolve_backend
from worldmodels.execution import collect

torch.set_num_threads(2)

FAST_BACKEND = resolve_backend("auto", quiet=True)  # envpool where installed


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """Six real CarRacing episodes of 80 steps (brownian policy), on the fastest backend."""
    out = tmp_path_factory.mktemp("store") / "episodes"
    config = CollectConfig(backend=FAST_BACKEND, episodes=6, max_steps=80, num_envs=3, seed=7)
    collect(config, str(out), progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A whole CarRacing run of the smoke preset (V, M, series, C, eval): read, never changed."""
    from worldmodels.cli import main

    out = tmp_path_factory.mktemp("pipeline") / "smoke"
    assert main(["pipeline", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def doom_run(tmp_path_factory):
    """A whole Doom run of the doom-smoke preset (C trained in the dream)."""
    from worldmodels.cli import main

    out = tmp_path_factory.mktemp("pipeline") / "doom"
    assert main(["pipeline", "--preset", "doom-smoke", "--out", str(out), "--no-progress"]) == 0
    return out
