"""Training V, the ConvVAE, on shuffled frames of an episode store.

``train_vae`` writes into its output folder::

    config.json   the VAEConfig of the run
    latest.pt     the checkpoint: model, optimizer, step, loader position, RNG state, config
    vae.pt        the finished model: {"state_dict", "z_size", "config"} (see ``load_vae``)
    recon.png     held-out frames (top) above their reconstructions (bottom)
    recon.gif     a held-out episode, real | reconstruction
    tb/           TensorBoard: losses, images/s, validation loss, reconstruction grids

A killed run started again with ``resume=True`` continues from ``latest.pt`` exactly: the
loader position and every RNG are restored, so the weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldmodels.config import VAEConfig, load_config, save_config, to_dict
from worldmodels.data.store import EpisodeStore, same_identity
from worldmodels.envs.carracing import check_mirrorable
from worldmodels.utils.device import autocast, pick_device, require_native_bf16
from worldmodels.utils.io import atomic_torch_save
from worldmodels.utils.training import (
    Checkpointer,
    budget_spent,
    check_finite,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    summary_writer,
)
from worldmodels.vision import pictures
from worldmodels.vision.data import FrameStream, episode_frames, open_frame_store, split_episodes
from worldmodels.vision.vae import ConvVAE, VAELoss, frames_to_input, vae_loss

VAE_FILE = "vae.pt"
CONFIG_FILE = "config.json"
TB_DIR = "tb"
VAL_BATCH = 500
# Settings a resumed run may change; any other difference from the checkpoint is refused.
CHANGEABLE_ON_RESUME = {
    "epochs",
    "max_steps",
    "time_budget_s",
    "checkpoint_every",
    "log_every",
    "val_every",
    "device",
    "channels_last",
    "init",  # a resume restores its own weights
}


@dataclass
class TrainSummary:
    steps: int  # optimizer steps done in total
    new_steps: int  # of which by this call
    epochs: float
    seconds: float
    images_per_second: float
    train_loss: float | None
    val_loss: float | None
    device: str
    model_path: Path
    total_seconds: float = 0.0  # over every run that trained this model (from the checkpoint)

    def line(self) -> str:
        def fmt(x):
            return "n/a" if x is None else f"{x:.1f}"

        return (
            f"trained V for {self.new_steps} steps (now {self.steps} steps, "
            f"{self.epochs:.2f} epochs) in {self.seconds:.1f} s, "
            f"{self.images_per_second:.0f} images/s on {self.device}; "
            f"train loss {fmt(self.train_loss)}, val loss {fmt(self.val_loss)}; "
            f"model {self.model_path}"
        )


@dataclass
class Position:
    """Where training stands: optimizer steps done and the loader's next batch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    seconds: float = 0.0  # training time up to this position, over every resumed run

    def advance(self, batches_per_epoch: int) -> None:
        self.step += 1
        self.batch += 1
        if self.batch == batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0


# ---------------------------------------------------------------------------------------------
# The finished model file


def save_vae(model: ConvVAE, config: VAEConfig, path: str | Path) -> Path:
    """Write the finished model atomically: {"state_dict", "z_size", "config"}, on the CPU."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_torch_save(
        path, {"state_dict": state, "z_size": model.z_size, "config": to_dict(config)}
    )


def load_vae(
    path: str | Path, device: str | torch.device = "cpu", z_size: int | None = None
) -> ConvVAE:
    """Load a model saved by ``train_vae`` (a ``vae.pt`` file or a run folder holding one).

    A missing file, a corrupt file, or weights of another architecture or z size (also: not
    ``z_size`` when one is asked for) raise an error naming the file and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        path = path / VAE_FILE
    if not path.exists():
        raise FileNotFoundError(f"VAE model not found: {path} (train one with train-vae)")
    state = load_checkpoint(path, "cpu", weights_only=True)
    if "state_dict" not in state or "z_size" not in state:
        raise ValueError(
            f"{path}: not a V model file (expected keys state_dict, z_size; "
            f"found {', '.join(map(str, state)) or 'none'})"
        )
    z = int(state["z_size"])
    if z_size is not None and z != z_size:
        raise ValueError(f"{path}: holds a VAE with z_size {z}, expected z_size {z_size}")
    model = ConvVAE(z)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise ValueError(
            f"{path}: weights do not fit a ConvVAE with z_size {z}: {detail}"
        ) from None
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Setup


def check_speed_options(config: VAEConfig, device: torch.device) -> None:
    """bf16 autocast needs native bfloat16 (a CUDA GPU with it, a CPU with AVX512-BF16 or AMX:
    elsewhere it is emulated, slower than float32); channels_last runs on CUDA and CPUs."""
    if config.channels_last and device.type not in ("cuda", "cpu"):
        raise ValueError(f"--channels-last runs on CUDA or a CPU; this run is on {device.type}")
    if config.bf16:
        require_native_bf16(device, "--bf16")


def configure_cuda() -> None:
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest convs
    torch.set_float32_matmul_precision("high")  # TF32 for the dense layers


def refuse_overwrite(out: Path, resume: bool) -> None:
    if resume:
        return
    if (out / VAE_FILE).exists():
        raise ValueError(
            f"{out} holds a finished model ({VAE_FILE}); resume it to train further, "
            "or choose another output folder"
        )
    if Checkpointer(out).exists():
        raise ValueError(
            f"{out} holds the checkpoint of an unfinished run; resume it, "
            "or choose another output folder"
        )


def total_steps(config: VAEConfig, stream: FrameStream) -> int:
    return config.max_steps or config.epochs * stream.batches_per_epoch


def store_fingerprint(store: EpisodeStore) -> dict[str, Any]:
    """What a resumed run must find unchanged in the store (the shuffling depends on it)."""
    return {
        "identity": store.manifest.get("identity"),
        "episodes": len(store),
        "frames": store.num_steps,
    }


def same_store(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    rest = ("episodes", "frames")
    return same_identity(saved["identity"] or {}, now["identity"] or {}) and all(
        saved[k] == now[k] for k in rest
    )


def check_resumable(saved: dict[str, Any], config: VAEConfig, store: EpisodeStore) -> None:
    old, new = saved["config"], to_dict(config)
    diffs = [
        f"{k}: {old.get(k)!r} in the checkpoint, {new[k]!r} now"
        for k in new
        if k not in CHANGEABLE_ON_RESUME and old.get(k) != new[k]
    ]
    if not same_store(saved["store"], store_fingerprint(store)):
        diffs.append(f"store: {saved['store']} in the checkpoint, {store_fingerprint(store)} now")
    if diffs:
        raise ValueError(
            f"cannot resume {saved['path']}: settings differ ({'; '.join(diffs)}); "
            "use the run's own settings or another output folder"
        )


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_state(model, optimizer, position: Position, config, store, val_loss) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": dataclasses.asdict(position),
        "rng": rng_state(),
        "config": to_dict(config),
        "z_size": model.z_size,
        "store": store_fingerprint(store),
        "val_loss": val_loss,
    }


def restore(checkpoints: Checkpointer, model, optimizer, config, store) -> tuple[Position, Any]:
    saved = checkpoints.load()
    saved["path"] = checkpoints.latest
    check_resumable(saved, config, store)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    return Position(**saved["position"]), saved.get("val_loss")


# ---------------------------------------------------------------------------------------------
# One step, validation


def to_input(frames: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW in [0, 1] on the device (the uint8 bytes travel)."""
    x = frames_to_input(frames.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def compute_loss(model: ConvVAE, x: torch.Tensor, config: VAEConfig) -> VAELoss:
    """Forward pass (bf16 under autocast if asked) and the loss in float32."""
    with autocast(x.device, config.bf16):
        recon, mu, logvar = model(x)
    return vae_loss(recon.float(), x, mu.float(), logvar.float(), config.kl_tolerance)


def train_step(model, optimizer, frames, config, step: int, checkpoints) -> torch.Tensor:
    """One optimizer step on a uint8 batch; returns (total, reconstruction, kl, kl_raw).

    A NaN/inf loss stops training before it reaches the weights (NonFiniteLossError).
    """
    x = to_input(frames, next(model.parameters()).device, config.channels_last)
    loss = compute_loss(model, x, config)
    check_finite(loss.total, step, checkpoints)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return torch.stack([loss.total, loss.reconstruction, loss.kl, loss.kl_raw]).detach()


class Meter:
    """Mean loss terms and images/s over the steps since the last report."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums, self.steps, self.images = torch.zeros(4), 0, 0
        self.since = time.perf_counter()

    def add(self, terms: torch.Tensor, images: int) -> None:
        self.sums += terms.float().cpu()
        self.steps += 1
        self.images += images

    def report(self) -> tuple[list[float], float]:
        now = time.perf_counter()
        means = (self.sums / max(self.steps, 1)).tolist()
        rate = self.images / max(now - self.since, 1e-9)
        self.reset()
        return means, rate


@torch.inference_mode()
def validation_loss(model, store, steps: np.ndarray, config, device) -> dict[str, float]:
    """Mean loss over the held-out frames.

    z's sampling noise comes from a forked RNG seeded with ``config.seed``: the loss is
    repeatable, and training's RNG stream is left untouched (exact resume).
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        for start in range(0, len(steps), VAL_BATCH):
            chunk = steps[start : start + VAL_BATCH]
            frames = torch.from_numpy(store.get_frames(chunk, "obs", mmap=False))
            loss = compute_loss(model, to_input(frames, device, config.channels_last), config)
            terms = torch.stack([loss.total, loss.reconstruction, loss.kl]).double().cpu()
            sums += terms * len(chunk)
    model.train()
    total, rec, kl = (sums / len(steps)).tolist()
    return {"total": total, "reconstruction": rec, "kl": kl}


def log_validation(writer, model, store, val_steps, grid_steps, config, device, step) -> float:
    val = validation_loss(model, store, val_steps, config, device) if len(val_steps) else None
    if val is not None:
        for name, value in val.items():
            writer.add_scalar(f"val/{name}", value, step)
    real = store.get_frames(grid_steps, "obs", mmap=False)
    grid = pictures.comparison_grid(real, pictures.reconstruct(model, real, device))
    writer.add_image("val/reconstruction", grid, step, dataformats="HWC")
    return None if val is None else val["total"]


# ---------------------------------------------------------------------------------------------
# The training loop


def train_vae(
    store_path: str | Path,
    out_dir: str | Path,
    config: VAEConfig,
    resume: bool = False,
    progress: bool = True,
) -> TrainSummary:
    """Train V on the frames of ``store_path`` into ``out_dir``; see the module docstring."""
    config.validate()
    out = Path(out_dir)
    store = open_frame_store(store_path)
    if config.mirror:
        check_mirrorable(store)
    train_eps, val_eps = split_episodes(store, config.val_episodes)
    device = pick_device(config.device)
    check_speed_options(config, device)
    refuse_overwrite(out, resume)
    if device.type == "cuda":
        configure_cuda()

    stream = FrameStream(
        store,
        train_eps,
        config.batch_size,
        config.seed,
        pin_memory=device.type == "cuda",
        mirror=config.mirror,
    )
    total = total_steps(config, stream)
    seed_everything(config.seed)  # the initial weights; a resumed run restores its RNG below
    checkpoints = Checkpointer(out)
    resuming = resume and checkpoints.exists()
    model = ConvVAE(config.z_size)
    if config.init is not None and not resuming:  # a resume restores its own weights
        model.load_state_dict(load_vae(config.init, z_size=config.z_size).state_dict())
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    position, val_loss = Position(), None
    if resuming:
        position, val_loss = restore(checkpoints, model, optimizer, config, store)
    save_config(config, out / CONFIG_FILE)

    # Held-out frames: validation loss over all of them, a grid of 8 spread over them.
    shown = val_eps if len(val_eps) else range(len(store) - 1, len(store))
    val_steps = episode_frames(store, val_eps)
    shown_steps = episode_frames(store, shown)
    grid_steps = shown_steps[np.linspace(0, len(shown_steps) - 1, 8).astype(int)]

    start_step, earlier_seconds = position.step, position.seconds
    writer = summary_writer(out / TB_DIR, purge_step=start_step + 1 if start_step else None)
    bar = tqdm(total=total, initial=start_step, desc="train V", unit="step", disable=not progress)
    batches = stream.batches(position.epoch, position.batch)
    meter, seen, train_loss = Meter(), 0, None
    t_start = time.perf_counter()

    def trained_seconds() -> float:
        return earlier_seconds + time.perf_counter() - t_start

    try:
        while position.step < total and not budget_spent(config.time_budget_s, trained_seconds()):
            batch = next(batches)
            terms = train_step(
                model, optimizer, batch.frames, config, position.step + 1, checkpoints
            )
            position.advance(stream.batches_per_epoch)
            step = position.step
            bar.update(1)
            meter.add(terms, len(batch.frames))
            seen += len(batch.frames)

            last = step == total or budget_spent(config.time_budget_s, trained_seconds())
            if step % config.log_every == 0 or last:
                train_loss = log_train(writer, bar, *meter.report(), step)
            if step % config.val_every == 0 or last:
                val_loss = log_validation(
                    writer, model, store, val_steps, grid_steps, config, device, step
                )
            if step % config.checkpoint_every == 0 or last:
                position.seconds = trained_seconds()
                state = checkpoint_state(model, optimizer, position, config, store, val_loss)
                checkpoints.save(state)
    finally:
        batches.close()
        bar.close()
        writer.close()
    seconds = time.perf_counter() - t_start

    new_steps = position.step - start_step
    model_path = out / VAE_FILE
    if new_steps or not model_path.exists():
        save_vae(model, config, model_path)
        pictures.write_pictures(model, store, shown.start, out, device)
    return TrainSummary(
        steps=position.step,
        new_steps=new_steps,
        epochs=position.step / stream.batches_per_epoch,
        seconds=seconds,
        images_per_second=seen / max(seconds, 1e-9),
        train_loss=train_loss,
        val_loss=val_loss,
        device=str(device),
        model_path=model_path,
        total_seconds=earlier_seconds + seconds,
    )


def log_train(writer, bar, means: list[float], rate: float, step: int) -> float:
    """TensorBoard scalars and the progress bar's postfix; returns the mean total loss."""
    for name, value in zip(("total", "reconstruction", "kl", "kl_raw"), means, strict=True):
        writer.add_scalar(f"train/{name}", value, step)
    writer.add_scalar("perf/images_per_second", rate, step)
    bar.set_postfix(loss=f"{means[0]:.1f}", img_s=f"{rate:.0f}")
    return means[0]


def load_run_config(out_dir: str | Path) -> VAEConfig | None:
    """The VAEConfig saved in a run folder, or None if it has none."""
    path = Path(out_dir) / CONFIG_FILE
    return load_config(VAEConfig, path) if path.exists() else None
