"""Training M, the MDN-RNN, on an encoded series store (teacher forcing).

One step: a batch of windows (z re-sampled from V's (mu, sigma)), the mixture NLL of
``z_{t+1}`` (plus reward MSE / done BCE when those heads are on), Adam, gradient norm
clipped at ``grad_clip`` with ``clip_grad_norm_`` (the pre-clip norm is logged). The
validation NLL on the held-out episodes is computed before training, every ``val_every``
steps and at the end.

Outputs in ``out_dir``: ``config.json``, ``latest.pt`` (the checkpoint an exact resume
starts from), ``tb/`` (TensorBoard), ``mdrnn.pt`` (the final model, read by
:func:`load_mdrnn`) and, given V and the source episodes, the dream-vs-real pictures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from worldmodels.config import MDNRNNConfig, from_dict, save_config, to_dict
from worldmodels.data.store import EpisodeStore, StoreError, is_store
from worldmodels.memory.data import SeriesInfo, WindowBatch, WindowSampler, open_series
from worldmodels.memory.mdrnn import MDNRNN, done_loss, mdn_nll, reward_loss
from worldmodels.utils.device import pick_device
from worldmodels.utils.io import atomic_torch_save
from worldmodels.utils.training import (
    LATEST,
    Checkpointer,
    NonFiniteLossError,
    budget_spent,
    check_finite,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    summary_writer,
)

MODEL_FILE = "mdrnn.pt"
CONFIG_FILE = "config.json"
PICTURES_DIR = "pictures"
PICTURE_START = 50
# what a resumed run must keep: the model's shape, and what its batches are made of
FIXED_ON_RESUME = ("hidden_size", "num_gaussians", "reward_head", "done_head", "mirror")


@dataclass
class TrainSummary:
    """What a call of :func:`train_mdrnn` did."""

    steps: int
    steps_new: int
    seconds: float
    sequence_steps_per_s: float
    device: str
    train_nll: float | None
    val_nll_start: float | None
    val_nll: float | None
    model_path: Path
    pictures: list[Path] = field(default_factory=list)
    total_seconds: float = 0.0  # over every run that trained this M (from the checkpoint)

    def line(self) -> str:
        val = "no validation episodes"
        if self.val_nll is not None:
            start = "?" if self.val_nll_start is None else f"{self.val_nll_start:.3f}"
            val = f"val NLL {start} -> {self.val_nll:.3f}"
        return (
            f"trained M for {self.steps_new} steps (total {self.steps}) in {self.seconds:.1f} s "
            "of training, "
            f"{self.sequence_steps_per_s:.0f} sequence-steps/s on {self.device}; {val}; "
            f"saved {self.model_path}"
        )


# ------------------------------------------------------------------ model
def build_mdrnn(config: MDNRNNConfig, z_size: int, action_size: int) -> MDNRNN:
    return MDNRNN(
        z_size=z_size,
        action_size=action_size,
        hidden_size=config.hidden_size,
        num_gaussians=config.num_gaussians,
        reward_head=config.reward_head,
        done_head=config.done_head,
        extra_inputs=int(config.restart_input),
    )


def save_mdrnn(path: str | Path, model: MDNRNN, config: MDNRNNConfig) -> Path:
    """The final model file read by :func:`load_mdrnn`, written atomically."""
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": to_dict(config),
        "z_size": model.z_size,
        "action_size": model.action_size,
    }
    return atomic_torch_save(path, state)


def load_mdrnn(
    path: str | Path,
    device: torch.device | str = "cpu",
    z_size: int | None = None,
    action_size: int | None = None,
) -> MDNRNN:
    """Load M from a model file written by :func:`save_mdrnn` (``mdrnn.pt``), in eval mode.

    A missing, corrupt or foreign file, weights of another shape, or a ``z_size`` /
    ``action_size`` other than the ones asked for are errors naming the file. Only
    tensors and plain values are unpickled (``weights_only``): model files get shared.
    """
    state = load_checkpoint(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("state_dict", "config", "z_size", "action_size") if k not in state]
    if missing:
        raise ValueError(
            f"{path}: not an MDN-RNN model file (it lacks {', '.join(missing)}; "
            f"expected the {MODEL_FILE} that train-mdrnn writes)"
        )
    weights = state["state_dict"]
    try:
        config = from_dict(MDNRNNConfig, state["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable MDN-RNN config: {e}") from None
    for name, wanted in (("z_size", z_size), ("action_size", action_size)):
        if wanted is not None and int(state[name]) != wanted:
            raise ValueError(f"{path}: M was trained with {name} {state[name]}, expected {wanted}")
    model = build_mdrnn(config, int(state["z_size"]), int(state["action_size"]))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
        raise ValueError(
            f"{path}: weights do not fit an MDN-RNN of z {model.z_size}, action "
            f"{model.action_size}, hidden {model.hidden_size}, {model.num_gaussians} "
            f"gaussians: {detail}"
        ) from None
    return model.to(device).eval()


# ------------------------------------------------------------------- step
def learning_rate_at(config: MDNRNNConfig, step: int) -> float:
    """``lr * lr_decay ** step``, never below ``min_learning_rate`` (nor above ``lr``)."""
    floor = min(config.learning_rate, config.min_learning_rate)
    return max(config.learning_rate * config.lr_decay**step, floor)


def compute_losses(model: MDNRNN, batch: WindowBatch, config: MDNRNNConfig) -> dict[str, Tensor]:
    """Teacher-forced losses of one batch: ``nll`` (+ ``reward``, ``done``) and ``total``."""
    extra = batch.restarts if model.extra_inputs else None
    out, _ = model(batch.inputs, batch.actions, extra)
    terms = {"nll": mdn_nll(out, batch.targets, batch.z_mask)}
    if model.reward_head:
        terms["reward"] = reward_loss(out, batch.rewards, batch.step_mask)
    if model.done_head:
        terms["done"] = done_loss(out, batch.dones, config.done_pos_weight, batch.step_mask)
    terms["total"] = sum(terms.values())
    return terms


def train_step(
    model: MDNRNN,
    optimizer: torch.optim.Optimizer,
    batch: WindowBatch,
    config: MDNRNNConfig,
    step: int,
    checkpoints: Checkpointer,
) -> tuple[dict[str, Tensor], Tensor]:
    """One optimizer step; returns the loss terms and the gradient norm before clipping."""
    terms = compute_losses(model, batch, config)
    check_finite(terms["total"], step, checkpoints)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    if not torch.isfinite(grad_norm):
        last = checkpoints.latest if checkpoints.exists() else "none written yet"
        raise NonFiniteLossError(
            f"gradient norm is {grad_norm.item()} at step {step}; training stopped. "
            f"Last good checkpoint: {last} (resume from it with a lower learning rate)"
        )
    optimizer.step()
    return terms, grad_norm


@torch.no_grad()
def evaluate(model: MDNRNN, sampler: WindowSampler, config: MDNRNNConfig, device) -> dict:
    """Mean losses over the held-out windows (fixed windows and noise); {} without any."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for batch in sampler.val_batches(device):
        terms = compute_losses(model, batch, config)
        for name, value in terms.items():
            if name == "total":
                continue
            mask = batch.z_mask if name == "nll" else batch.step_mask
            n = batch.sequence_steps if mask is None else float(mask.sum())
            sums[name] = sums.get(name, 0.0) + value.item() * n
            counts[name] = counts.get(name, 0.0) + n
    model.train(was_training)
    return {name: sums[name] / max(counts[name], 1.0) for name in sums}


# ---------------------------------------------------------------- the loop
@dataclass
class _Run:
    """What the training loop works on."""

    model: MDNRNN
    optimizer: torch.optim.Optimizer
    sampler: WindowSampler
    config: MDNRNNConfig
    device: torch.device
    checkpoints: Checkpointer
    writer: Any
    history: dict[str, float | None]
    earlier_seconds: float = 0.0  # what the runs before this one spent (from the checkpoint)
    started: float = field(default_factory=time.perf_counter)

    def validate(self, step: int) -> float | None:
        losses = evaluate(self.model, self.sampler, self.config, self.device)
        for name, value in losses.items():
            self.writer.add_scalar(f"val/{name}", value, step)
        return losses.get("nll")

    def seconds(self) -> float:
        """Wall time over every run that trained this M (a resumed stage reports it all)."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return budget_spent(self.config.time_budget_s, self.seconds())

    def checkpoint(self, step: int) -> None:
        self.history["seconds"] = self.seconds()
        info = self.sampler.info
        self.checkpoints.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": step,
                "rng": rng_state(),
                "config": to_dict(self.config),
                "z_size": info.z_size,
                "action_size": info.action_size,
                "history": dict(self.history),
            }
        )

    def log(self, terms: dict[str, Tensor], grad_norm: Tensor, step: int, rate: float) -> None:
        for name, value in terms.items():
            self.writer.add_scalar(f"train/{name}", value.item(), step)
        self.writer.add_scalar("train/grad_norm_before_clip", grad_norm.item(), step)
        self.writer.add_scalar("train/learning_rate", self.optimizer.param_groups[0]["lr"], step)
        self.writer.add_scalar("speed/sequence_steps_per_s", rate, step)


def train_mdrnn(
    series_path: str | Path,
    out_dir: str | Path,
    config: MDNRNNConfig,
    resume: bool = False,
    progress: bool = True,
    vae_path: str | Path | None = None,
    episodes_path: str | Path | None = None,
) -> TrainSummary:
    """Train M on the series store at ``series_path``; outputs in ``out_dir`` (module doc).

    ``resume=True`` continues from ``out_dir/latest.pt`` exactly (same batches, same
    optimizer state); without it a folder holding a run is refused. Given ``vae_path``
    (and ``episodes_path``, the store the series was encoded from, if the series manifest
    does not name its ``source``), the dream-vs-real pictures of the first held-out
    episode are written to ``out_dir/pictures`` at the end.
    """
    config.validate()
    info = open_series(series_path, config.z_size, config.action_size)
    device = pick_device(config.device)
    sampler = WindowSampler(
        info,
        config.seq_len,
        config.batch_size,
        val_episodes=config.val_episodes,
        seed=config.seed,
        terminal=config.reward_head or config.done_head,
        pad_short=config.pad_short,
        mirror=config.mirror,
    )
    vae, obs = _picture_inputs(sampler, vae_path, episodes_path, device)
    out = Path(out_dir)
    checkpoints = _prepare_out_dir(out, resume)

    seed_everything(config.seed)
    model = build_mdrnn(config, info.z_size, info.action_size)
    resuming = resume and checkpoints.exists()
    if config.init is not None and not resuming:  # a resume restores its own weights
        start_from(model, config.init, info)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    start, history = 0, {"val_nll_start": None, "val_nll": None}
    if resuming:
        start, history = _restore(checkpoints, model, optimizer, config, info)
    save_config(config, out / CONFIG_FILE)

    writer = summary_writer(out / "tb", purge_step=start or None)
    earlier = history.get("seconds") or 0.0
    run = _Run(model, optimizer, sampler, config, device, checkpoints, writer, history, earlier)
    try:
        if start == 0 and sampler.val is not None:
            history["val_nll_start"] = run.validate(0)
        train_nll, seconds, total = _loop(run, start, progress)
        history["val_nll"] = run.validate(total)
        run.checkpoint(total)
    finally:
        writer.close()
    total_seconds = float(history["seconds"])
    model_path = save_mdrnn(out / MODEL_FILE, model, config)
    pictures = [] if vae is None else _pictures(model, vae, obs, sampler, out)
    steps_new = total - start
    return TrainSummary(
        steps=total,
        steps_new=steps_new,
        seconds=seconds,
        sequence_steps_per_s=steps_new * config.batch_size * config.seq_len / max(seconds, 1e-9),
        device=str(device),
        train_nll=train_nll,
        val_nll_start=history["val_nll_start"],
        val_nll=history["val_nll"],
        model_path=model_path,
        pictures=pictures,
        total_seconds=total_seconds,
    )


def start_from(model: MDNRNN, path: str | Path, info) -> None:
    """Copy the weights of the M saved at ``path`` into ``model``: the same sizes and heads, or
    an error naming the file."""
    given = load_mdrnn(path, z_size=info.z_size, action_size=info.action_size)
    try:
        model.load_state_dict(given.state_dict())
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(
            f"{path}: an M of another architecture than the mdrnn settings ask for: {first}"
        ) from None


def _loop(run: _Run, start: int, progress: bool) -> tuple[float | None, float, int]:
    """Steps ``start .. steps - 1``, or until the time budget is spent; returns (last logged
    train NLL, seconds spent training, steps done in all)."""
    config = run.config
    seq_steps = config.batch_size * config.seq_len
    bar = tqdm(total=config.steps, initial=start, desc="train M", unit="step", disable=not progress)
    seconds, nll, done = 0.0, None, max(start, config.steps)
    run.model.train()
    try:
        for step in range(start, config.steps):
            if run.out_of_time():
                done = step
                break
            tick = time.perf_counter()
            for group in run.optimizer.param_groups:
                group["lr"] = learning_rate_at(config, step)
            batch = run.sampler.batch(step, run.device)
            terms, grad_norm = train_step(
                run.model, run.optimizer, batch, config, step, run.checkpoints
            )
            done = step + 1
            last = done == config.steps or run.out_of_time()
            if done % config.log_every == 0 or last:
                nll = terms["nll"].item()  # waits for the device: time it with the step
                seconds += time.perf_counter() - tick
                rate = (done - start) * seq_steps / seconds
                run.log(terms, grad_norm, done, rate)
                bar.set_postfix(loss=f"{terms['total'].item():.3f}", seq_steps_s=f"{rate:.0f}")
            else:
                seconds += time.perf_counter() - tick
            bar.update(1)
            if last:
                break  # validated and checkpointed by the caller
            if done % config.val_every == 0:
                run.history["val_nll"] = run.validate(done)
            if done % config.checkpoint_every == 0:
                run.checkpoint(done)
    finally:
        bar.close()
    return nll, seconds, done


# ------------------------------------------------------------ checkpoints
def _prepare_out_dir(out: Path, resume: bool) -> Checkpointer:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if is_store(out):
        raise ValueError(f"{out}: is an episode store; choose another --out for the M run")
    if not resume:
        if (out / MODEL_FILE).exists():
            raise ValueError(
                f"{out}: holds a finished M run ({MODEL_FILE}); pass --resume to continue "
                "it (with more --steps) or choose another --out"
            )
        if (out / LATEST).exists():
            raise ValueError(
                f"{out}: holds an unfinished M run (latest.pt); pass --resume to continue it "
                "or choose another --out"
            )
    return Checkpointer(out)


def _restore(checkpoints, model, optimizer, config, info: SeriesInfo) -> tuple[int, dict]:
    state = checkpoints.load()
    path = checkpoints.latest
    saved = state.get("config", {})
    for name, have in (("z_size", info.z_size), ("action_size", info.action_size)):
        if state.get(name) != have:
            raise ValueError(
                f"{path}: run trained with {name} {state.get(name)}, series has {have}"
            )
    for name in FIXED_ON_RESUME:
        if saved.get(name) != getattr(config, name):
            raise ValueError(
                f"{path}: run trained with {name}={saved.get(name)!r}, now "
                f"{getattr(config, name)!r}; resume with the same settings"
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    history = {"val_nll_start": None, "val_nll": None, **state.get("history", {})}
    return int(state["step"]), history


# --------------------------------------------------------------- pictures
def _picture_inputs(sampler: WindowSampler, vae_path, episodes_path, device):
    """V and the source frames of the picture episode, checked before training starts.

    The episode is the first held-out one (the last episode if none is held out).
    Returns ``(None, None)`` without ``vae_path``.
    """
    if vae_path is None:
        if episodes_path is not None:
            raise ValueError("--episodes is for the dream pictures, which also need --vae")
        return None, None
    from worldmodels.vision.train import load_vae

    series = sampler.info.store
    episodes_path = episodes_path or series.manifest.get("source")
    if episodes_path is None:
        raise ValueError(f"{series.path}: names no source episodes; pass --episodes")
    source = EpisodeStore(episodes_path)
    pos = picture_episode(sampler)
    index = series.indices[pos]
    if source.kind != "episodes" or index not in source.indices:
        raise StoreError(f"{source.path}: has no episode {index} (the series' held-out episode)")
    obs = source[source.indices.index(index)]["obs"]
    if len(obs) != len(series[pos]):
        raise StoreError(
            f"{source.path}: episode {index} has {len(obs)} frames, the series {len(series[pos])}"
        )
    return load_vae(vae_path, device, z_size=sampler.info.z_size), obs


def picture_episode(sampler: WindowSampler) -> int:
    """Store position of the episode pictured: the first held-out one, else the last."""
    if sampler.val is not None:
        return int(sampler.val.episodes[0])
    return len(sampler.info.store) - 1


def _pictures(model: MDNRNN, vae, obs, sampler: WindowSampler, out: Path) -> list[Path]:
    from worldmodels.memory.pictures import dream_vs_real

    episode = sampler.info.store[picture_episode(sampler)]
    start = min(PICTURE_START, (len(episode) - 2) // 2)  # CarRacing zooms in at first
    made = dream_vs_real(model, vae, episode, obs, out / PICTURES_DIR, start=start)
    return [made.png, made.gif]
