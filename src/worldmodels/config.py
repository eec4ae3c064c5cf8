"""Typed configs for every stage, with named presets, saved beside each run's outputs."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worldmodels.utils.io import atomic_write_json

T = TypeVar("T")


@dataclass
class CollectConfig:
    """Rollout collection into an episode store."""

    env: str = "carracing"
    backend: str = "auto"  # auto | gymnasium | envpool
    episodes: int = 100
    max_steps: int = 1000
    policy: str = "brownian"  # brownian | random_weights
    num_envs: int = 8  # environments stepped as one batch
    workers: int | None = None  # gymnasium subprocesses (default: one per core)
    seed: int = 0

    def validate(self) -> None:
        for name in ("episodes", "max_steps", "num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass
class VAEConfig:
    """Training V, the ConvVAE (paper: Adam 1e-4, batch 100, KL tolerance 0.5 per dim)."""

    z_size: int = 32
    kl_tolerance: float = 0.5
    learning_rate: float = 1e-4
    batch_size: int = 100
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    val_episodes: int = 1  # held-out episodes for validation loss and pictures
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "auto"
    bf16: bool = False  # CUDA only
    channels_last: bool = False  # CUDA only
    seed: int = 0

    def validate(self) -> None:
        for name in ("z_size", "batch_size", "epochs", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.val_episodes < 0:
            raise ValueError(f"val_episodes must be >= 0, got {self.val_episodes}")


@dataclass
class MDNRNNConfig:
    """Training M, the MDN-RNN (paper CarRacing: LSTM 256, 5 mixtures, seq 999, batch 100)."""

    hidden_size: int = 256
    num_gaussians: int = 5
    reward_head: bool = False
    done_head: bool = False
    done_pos_weight: float = 10.0
    seq_len: int = 999
    batch_size: int = 100
    learning_rate: float = 1e-3
    lr_decay: float = 1.0  # multiply the learning rate by this every step (Doom: to 1e-5)
    min_learning_rate: float = 1e-5
    grad_clip: float = 1.0
    steps: int = 4000
    val_episodes: int = 1
    checkpoint_every: int = 200
    log_every: int = 20
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        for name in (
            "hidden_size",
            "num_gaussians",
            "seq_len",
            "batch_size",
            "steps",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ValueError("learning_rate and grad_clip must be positive")
        if self.val_episodes < 0:
            raise ValueError(f"val_episodes must be >= 0, got {self.val_episodes}")


@dataclass
class PipelineConfig:
    """All stages of one run; presets below."""

    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)


PRESETS: dict[str, PipelineConfig] = {
    "smoke": PipelineConfig(
        collect=CollectConfig(episodes=4, max_steps=60, num_envs=4, policy="brownian"),
        vae=VAEConfig(max_steps=20, batch_size=32, checkpoint_every=10, log_every=5),
        mdrnn=MDNRNNConfig(seq_len=30, batch_size=4, steps=20, checkpoint_every=10, log_every=5),
    ),
    "laptop": PipelineConfig(
        collect=CollectConfig(episodes=200, max_steps=1000, num_envs=16, policy="brownian"),
        vae=VAEConfig(epochs=3, learning_rate=3e-4),
        mdrnn=MDNRNNConfig(seq_len=999, batch_size=16, steps=600),
    ),
    "paper": PipelineConfig(
        collect=CollectConfig(
            episodes=10_000, max_steps=1000, num_envs=64, policy="random_weights"
        ),
    ),
}


def preset(name: str) -> PipelineConfig:
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (nested) config dataclass from a dict; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    kwargs = {}
    for key, value in data.items():
        sub = hints[key]
        nested = dataclasses.is_dataclass(sub) and isinstance(value, dict)
        kwargs[key] = from_dict(sub, value) if nested else value
    return cls(**kwargs)


def save_config(config: Any, path: str | Path) -> None:
    atomic_write_json(path, {"type": type(config).__name__, **to_dict(config)})


def load_config(cls: type[T], path: str | Path) -> T:
    data = json.loads(Path(path).read_text())
    data.pop("type", None)
    return from_dict(cls, data)
