"""What every training loop shares: checkpoints, exact resume, the NaN guard, TensorBoard."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodels.utils.io import atomic_torch_save

LATEST = "latest.pt"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step and the checkpoint."""


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Checkpointer:
    """Atomic checkpoints in ``folder``: ``latest.pt`` always points at the newest good state."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def latest(self) -> Path:
        return self.folder / LATEST

    def exists(self) -> bool:
        return self.latest.exists()

    def save(self, state: dict[str, Any]) -> Path:
        return atomic_torch_save(self.latest, state)

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.latest, map_location)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = False
) -> dict[str, Any]:
    """Load a checkpoint written by this package; a missing or corrupt file is named.

    ``weights_only=True`` refuses arbitrary pickled objects: for files that get shared (models).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # torch raises several types for a damaged file
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file: {load_error_reason(e)}"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    return state


def load_error_reason(error: Exception) -> str:
    """torch.load's reason in one line (its weights-only refusal is a page of advice)."""
    text = str(error)
    refused = "WeightsUnpickler error:" in text
    if refused:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0][:300] if lines else type(error).__name__
    return f"refused by the weights-only loader: {reason}" if refused else reason


def check_finite(loss: torch.Tensor, step: int, checkpoints: Checkpointer) -> None:
    """Stop training on a NaN/inf loss, naming the step and the last good checkpoint."""
    if not torch.isfinite(loss).all():
        last = checkpoints.latest if checkpoints.exists() else "none written yet"
        raise NonFiniteLossError(
            f"loss is {loss.item()} at step {step}; training stopped. "
            f"Last good checkpoint: {last} (resume from it with a lower learning rate)"
        )


def summary_writer(log_dir: str | Path, purge_step: int | None = None):
    """A TensorBoard writer; ``purge_step`` hides what a killed run logged after its checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def budget_spent(budget_s: float | None, seconds: float) -> bool:
    """Whether a training time budget (None: no budget) is used up after ``seconds``."""
    return budget_s is not None and seconds >= budget_s
