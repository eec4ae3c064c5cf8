"""Training windows for M, cut from a series store (the encoded episodes).

A window is ``seq_len + 1`` consecutive steps of one episode: the inputs are ``(z_t, a_t)``
for the first ``seq_len`` steps and the targets ``z_{t+1}`` (and ``r_t``, ``done_t``) are the
next step's. No window straddles two episodes: start positions are drawn only where the
whole window fits. ``z`` is re-sampled from ``N(mu, exp(logvar / 2)^2)`` for every batch,
as in the paper.

The last step of an episode has no next frame. With a reward or done head the sampler
also draws the window whose last input is that step (its ``z`` target masked out), so that
the done head sees the episode's end and the reward head its final reward.

With ``mirror`` (CarRacing), half of the training windows, drawn by ``(seed, i)``, come from
the mirrored episode instead: ``mu_mirror`` / ``logvar_mirror`` (written by ``encode`` with
``mirror``) and the steering negated (``envs.carracing.mirror_actions``). Validation windows
are never mirrored.

Everything is read from memory-mapped episode files and gathered per batch, so memory stays
bounded whatever the store's size. Batch ``i`` depends only on ``(seed, i)``: a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from worldmodels.data.store import EpisodeStore, StoreError
from worldmodels.envs.carracing import check_mirrorable, mirror_actions
from worldmodels.vision.data import split_episodes

SERIES_ARRAYS = ("mu", "logvar", "actions", "rewards", "terminated")
_VAL_STREAM = 1  # seed-sequence spawn keys: training batches and validation noise differ
_TRAIN_STREAM = 0


@dataclass
class SeriesInfo:
    """What a series store holds."""

    store: EpisodeStore
    z_size: int
    action_size: int


def open_series(
    path: str | Path, z_size: int | None = None, action_size: int | None = None
) -> SeriesInfo:
    """Open a series store and check it; ``z_size`` / ``action_size`` must match if given."""
    store = EpisodeStore(path)
    if store.kind != "series":
        raise StoreError(
            f"{store.path}: a store of kind {store.kind!r}, not an encoded series store "
            "(encode the episodes with V first: worldmodels encode)"
        )
    missing = [k for k in ("z_size", "action_size") if k not in store.manifest]
    if missing:
        raise StoreError(f"{store.path}: series manifest lacks {', '.join(missing)}")
    info = SeriesInfo(store, int(store.manifest["z_size"]), int(store.manifest["action_size"]))
    for name, wanted in (("z_size", z_size), ("action_size", action_size)):
        have = getattr(info, name)
        if wanted is not None and wanted != have:
            raise ValueError(
                f"{store.path}: the series store has {name} {have}, the model {wanted}"
            )
    if len(store) == 0:
        raise StoreError(f"{store.path}: the series store holds no episodes")
    for i in {0, len(store) - 1}:
        _check_episode_arrays(info, i)
    return info


def _check_episode_arrays(info: SeriesInfo, i: int) -> None:
    ep = info.store[i]
    missing = [k for k in SERIES_ARRAYS if k not in ep.keys]
    if missing:
        raise StoreError(f"{ep.path}: series episode lacks {', '.join(missing)}")
    for key, size in (("mu", info.z_size), ("logvar", info.z_size), ("actions", info.action_size)):
        shape = ep[key].shape
        if shape[1:] != (size,):
            raise StoreError(f"{ep.path}: {key} has shape {shape}, the manifest says (N, {size})")


@dataclass
class WindowBatch:
    """A batch of windows on one device.

    ``z`` ``(B, L + 1, z)`` (inputs ``z[:, :-1]``, targets ``z[:, 1:]``), ``actions``
    ``(B, L, a)``, ``rewards`` / ``dones`` ``(B, L)`` (the outcome of ``a_t``).
    ``z_mask`` marks which ``z`` targets exist and ``step_mask`` which input steps exist,
    each ``(B, L)`` bool, or ``None`` where all do. ``episodes`` / ``starts`` (numpy) say
    where each window comes from (store positions and first step).
    """

    z: Tensor
    actions: Tensor
    rewards: Tensor
    dones: Tensor
    z_mask: Tensor | None
    step_mask: Tensor | None
    episodes: np.ndarray
    starts: np.ndarray

    @property
    def inputs(self) -> Tensor:
        return self.z[:, :-1]

    @property
    def targets(self) -> Tensor:
        return self.z[:, 1:]

    @property
    def restarts(self) -> Tensor:
        """``(B, L)`` float: 1 where the input step is its episode's first (Doom's restart flag)."""
        device = self.actions.device
        length = self.actions.shape[1]
        first = torch.as_tensor(self.starts, device=device)[:, None]
        return (first + torch.arange(length, device=device) == 0).to(self.actions.dtype)

    @property
    def sequence_steps(self) -> int:
        """Number of predicted steps in the batch (B x L)."""
        return self.actions.shape[0] * self.actions.shape[1]


class SeriesWindows:
    """Windows of ``seq_len + 1`` steps over some episodes of a series store.

    ``episodes``: the store positions to draw from. ``terminal``: also draw the window
    that ends one step past the episode (its last ``z`` target masked; see module doc).
    ``pad_short``: an episode shorter than ``seq_len + 1`` gives one window, padded and
    masked, instead of an error.
    """

    def __init__(
        self,
        info: SeriesInfo,
        episodes: range | list[int],
        seq_len: int,
        terminal: bool = False,
        pad_short: bool = False,
    ):
        self.info = info
        self.store = info.store
        self.episodes = np.asarray(list(episodes), dtype=np.int64)
        self.seq_len = seq_len
        self.terminal = terminal
        lengths = self.store.lengths[self.episodes]
        _check_lengths(self.store.path, lengths, seq_len, pad_short)
        # Start s is valid while s + seq_len <= N - 1 (N - seq_len of them), one more
        # (s = N - seq_len) for the terminal window; a padded short episode has one.
        self.num_starts = np.maximum(lengths - seq_len + int(terminal), 1)
        # A window spans min(length, seq_len + 1) steps of its episode: drawing episodes in
        # proportion to length / span makes the steps drawn from each one proportional to
        # its length, so every step of the data is about equally likely to be trained on,
        # as in the paper's single stream of episodes.
        spans = np.minimum(lengths, seq_len + 1)
        self.episode_weights = (lengths / spans) / (lengths / spans).sum()

    def sample_positions(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (store position, start) pairs: an episode (weighted as above), then a start
        uniformly within it.

        Drawing uniformly over all windows instead would favour each step of a long episode
        ~``seq_len`` times over one of a padded short episode (which has a single window):
        on Doom, where most episodes are shorter than a window, M would hardly ever see a
        death and its done head would never fire.
        """
        which = rng.choice(len(self.episodes), size=n, p=self.episode_weights)
        return self.episodes[which], rng.integers(self.num_starts[which])

    def tiling_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Windows covering every step of every episode (starts 0, L, 2L, ... and the last)."""
        eps, starts = [], []
        for e, n in zip(self.episodes, self.num_starts, strict=True):
            s = list(range(0, int(n), self.seq_len))
            if s[-1] != n - 1:
                s.append(int(n) - 1)
            eps += [e] * len(s)
            starts += s
        return np.asarray(eps, np.int64), np.asarray(starts, np.int64)

    def gather(
        self,
        episodes: np.ndarray,
        starts: np.ndarray,
        device: torch.device | str,
        generator: torch.Generator,
        mirrored: np.ndarray | None = None,
    ) -> WindowBatch:
        """Read the given windows (memory-mapped slices) and sample ``z`` on ``device``;
        ``mirrored`` (bool per window): those from the mirrored episode."""
        b, n = len(episodes), self.seq_len + 1
        za, aa = self.info.z_size, self.info.action_size
        mu = np.zeros((b, n, za), np.float16)
        logvar = np.zeros((b, n, za), np.float16)
        actions = np.zeros((b, n, aa), np.float32)
        rewards = np.zeros((b, n), np.float32)
        dones = np.zeros((b, n), bool)
        valid = np.zeros((b, n), bool)
        for i, (e, s) in enumerate(zip(episodes, starts, strict=True)):
            ep = self.store[int(e)]
            stop = min(int(s) + n, len(ep))
            k = stop - int(s)
            flip = mirrored is not None and mirrored[i]
            mu[i, :k] = ep["mu_mirror" if flip else "mu"][s:stop]
            logvar[i, :k] = ep["logvar_mirror" if flip else "logvar"][s:stop]
            actions[i, :k] = ep["actions"][s:stop]
            if flip:
                actions[i, :k] = mirror_actions(actions[i, :k])
            rewards[i, :k] = ep["rewards"][s:stop]
            dones[i, :k] = ep["terminated"][s:stop]
            valid[i, :k] = True
        z = _sample_z(
            torch.from_numpy(mu).to(device), torch.from_numpy(logvar).to(device), generator
        )
        z_mask, step_mask = valid[:, 1:], valid[:, :-1]
        return WindowBatch(
            z=z,
            actions=torch.from_numpy(actions[:, :-1]).to(device),
            rewards=torch.from_numpy(rewards[:, :-1]).to(device),
            dones=torch.from_numpy(dones[:, :-1]).to(device),
            z_mask=None if z_mask.all() else torch.from_numpy(z_mask).to(device),
            step_mask=None if step_mask.all() else torch.from_numpy(step_mask).to(device),
            episodes=np.asarray(episodes),
            starts=np.asarray(starts),
        )


def _check_lengths(path: Path, lengths: np.ndarray, seq_len: int, pad_short: bool) -> None:
    shortest = int(lengths.min())
    if pad_short:
        if shortest < 2:
            raise StoreError(f"{path}: an episode of {shortest} step(s) has no transition to learn")
    elif shortest < seq_len + 1:
        raise StoreError(
            f"{path}: the shortest episode has {shortest} steps, fewer than seq_len + 1 = "
            f"{seq_len + 1}; lower --seq-len or allow padding (pad_short / --pad-short)"
        )


def check_mirrored_latents(store: EpisodeStore) -> None:
    check_mirrorable(store)
    if not store.manifest["identity"].get("mirror"):
        raise StoreError(
            f"{store.path}: the series store holds no mirrored latents (encode with --mirror; "
            "the pipeline does when mdrnn.mirror is set)"
        )


def _sample_z(mu: Tensor, logvar: Tensor, generator: torch.Generator) -> Tensor:
    """``z = mu + exp(logvar / 2) * eps`` in float32, ``eps`` from ``generator``."""
    mu, logvar = mu.float(), logvar.float()
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def _generator(device: torch.device | str, *key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> 1)
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


class WindowSampler:
    """Training batches (random windows, batch ``i`` fixed by ``(seed, i)``; with ``mirror``
    half of them mirrored) and validation batches (a fixed tiling of the held-out episodes
    with fixed noise).
    """

    def __init__(
        self,
        info: SeriesInfo,
        seq_len: int,
        batch_size: int,
        val_episodes: int = 0,
        seed: int = 0,
        terminal: bool = False,
        pad_short: bool = False,
        mirror: bool = False,
    ):
        if mirror:
            check_mirrored_latents(info.store)
        train, val = split_episodes(info.store, val_episodes)
        self.info = info
        self.mirror = mirror
        self.batch_size = batch_size
        self.seed = seed
        self.train = SeriesWindows(info, train, seq_len, terminal, pad_short)
        self.val = SeriesWindows(info, val, seq_len, terminal, pad_short) if len(val) else None

    def batch(self, step: int, device: torch.device | str = "cpu") -> WindowBatch:
        """Training batch number ``step``: the same windows and noise for the same seed."""
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, step])
        episodes, starts = self.train.sample_positions(rng, self.batch_size)
        mirrored = rng.random(self.batch_size) < 0.5 if self.mirror else None
        gen = _generator(device, self.seed, _TRAIN_STREAM, step)
        return self.train.gather(episodes, starts, device, gen, mirrored)

    def val_batches(self, device: torch.device | str = "cpu"):
        """The held-out windows in batches, with the same noise on every call."""
        if self.val is None:
            return
        episodes, starts = self.val.tiling_positions()
        gen = _generator(device, self.seed, _VAL_STREAM)
        for i in range(0, len(episodes), self.batch_size):
            sl = slice(i, i + self.batch_size)
            yield self.val.gather(episodes[sl], starts[sl], device, gen)
