"""Shuffled frames from an episode store, in bounded memory whatever the store's size.

Each epoch visits every training frame once, in the order of a permutation drawn from
``(seed, epoch)``; batch ``b`` of epoch ``e`` is always the same frames, so a loader's whole
state is the pair ``(epoch, batch)`` and a resumed run sees exactly the batches it would have
seen. Frames are read with plain file reads (no memory maps kept, so nothing of the store stays
resident) by a few background threads that keep the next batches ready while the model trains.

With ``mirror`` (CarRacing only), half of each batch, chosen by ``(seed, epoch, batch)``, is
flipped left-right (``envs.carracing.mirror_frames``): V learns right-hand bends as well as the
more common left-hand ones. The last ``val_episodes`` episodes (by index) are held out for
validation and pictures, never mirrored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.data.store import EpisodeStore, StoreError
from worldmodels.envs.carracing import mirror_frames

FRAME_SHAPE = (64, 64, 3)
HEADER_CACHE = 4096  # episode headers kept open (no memory maps: a few KB each)
_MIRROR_KEY = 1  # seed-sequence key: which frames of a batch are mirrored


def open_frame_store(path: str | Path) -> EpisodeStore:
    """Open an episodes store and check that it holds uint8 (N, 64, 64, 3) frames."""
    store = EpisodeStore(path, cache_size=HEADER_CACHE)
    if store.kind != "episodes":
        raise StoreError(
            f"{store.path}: is a {store.kind!r} store; V needs an 'episodes' store "
            "(made by `worldmodels collect`)"
        )
    if len(store) == 0:
        raise StoreError(f"{store.path}: the store holds no episodes (collect some first)")
    for ep in store:
        try:
            shape, dtype = ep.array_spec("obs")
        except KeyError:
            raise StoreError(f"{ep.path}: the episode has no 'obs' array") from None
        if shape[1:] != FRAME_SHAPE or dtype != np.uint8:
            raise StoreError(
                f"{ep.path}: frames are {dtype} {list(shape)}, expected uint8 [N, 64, 64, 3]"
            )
    return store


def split_episodes(store: EpisodeStore, val_episodes: int) -> tuple[range, range]:
    """(training, validation) episode positions: validation is the last ``val_episodes``."""
    if val_episodes >= len(store):
        raise ValueError(
            f"{store.path}: holds {len(store)} episodes, too few to hold out {val_episodes} "
            "for validation (lower --val-episodes or collect more)"
        )
    cut = len(store) - val_episodes
    return range(cut), range(cut, len(store))


def episode_frames(store: EpisodeStore, positions: range) -> np.ndarray:
    """The global step numbers of every frame of the episodes at ``positions`` (contiguous)."""
    return np.arange(store.offsets[positions.start], store.offsets[positions.stop])


@dataclass
class Batch:
    epoch: int
    index: int  # batch number within the epoch
    frames: torch.Tensor  # uint8 (B, 64, 64, 3)


class FrameStream:
    """Batches of shuffled frames from ``episodes`` (store positions, a contiguous range).

    ``batches(epoch, batch)`` yields ``Batch`` objects from that position on, epoch after epoch,
    for as long as it is iterated. The last batch of an epoch may be smaller.
    """

    def __init__(
        self,
        store: EpisodeStore,
        episodes: range,
        batch_size: int,
        seed: int,
        prefetch: int = 4,
        workers: int = 2,
        pin_memory: bool = False,
        mirror: bool = False,
    ):
        self.store = store
        self.frames = episode_frames(store, episodes)
        if len(self.frames) == 0:
            raise StoreError(f"{store.path}: the training episodes hold no frames")
        self.batch_size = batch_size
        self.seed = seed
        self.prefetch = max(1, prefetch)
        self.workers = max(1, workers)
        self.pin_memory = pin_memory
        self.mirror = mirror

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.frames) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The global step numbers of the training frames, in epoch ``epoch``'s order."""
        rng = np.random.default_rng([self.seed, epoch])
        return self.frames[rng.permutation(len(self.frames))]

    def batch_steps(self, epoch: int, index: int, order: np.ndarray | None = None) -> np.ndarray:
        order = self.order(epoch) if order is None else order
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def mirrored(self, epoch: int, index: int, n: int) -> np.ndarray | None:
        """Which of batch ``index``'s ``n`` frames are flipped (half), None without mirror."""
        if not self.mirror:
            return None
        which = np.zeros(n, dtype=bool)
        rng = np.random.default_rng([self.seed, epoch, index, _MIRROR_KEY])
        which[rng.permutation(n)[: n // 2]] = True
        return which

    def load(self, steps: np.ndarray, mirrored: np.ndarray | None = None) -> torch.Tensor:
        frames = self.store.get_frames(steps, "obs", mmap=False)
        if mirrored is not None:
            frames = mirror_frames(frames, mirrored)
        frames = torch.from_numpy(frames)
        return frames.pin_memory() if self.pin_memory else frames

    def positions(self, epoch: int, index: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """(epoch, batch, steps) from the given position on, forever."""
        while True:
            order = self.order(epoch)
            for b in range(index, self.batches_per_epoch):
                yield epoch, b, self.batch_steps(epoch, b, order)
            epoch, index = epoch + 1, 0

    def batches(self, epoch: int = 0, index: int = 0) -> Iterator[Batch]:
        """Batches from (epoch, index) on, read ``prefetch`` ahead by background threads."""
        if not 0 <= index < self.batches_per_epoch:
            raise ValueError(f"batch {index} out of range (an epoch has {self.batches_per_epoch})")
        todo = self.positions(epoch, index)
        pending: deque = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="frames") as pool:
            try:
                for e, b, steps in todo:
                    mirrored = self.mirrored(e, b, len(steps))
                    pending.append((e, b, pool.submit(self.load, steps, mirrored)))
                    if len(pending) > self.prefetch:
                        e, b, future = pending.popleft()
                        yield Batch(e, b, future.result())
            finally:
                for *_, future in pending:
                    future.cancel()


def read_episode_frames(store: EpisodeStore, position: int, limit: int | None = None) -> np.ndarray:
    """The frames of one episode (the first ``limit`` of them), read into memory."""
    ep = store[position]
    n = len(ep) if limit is None else min(limit, len(ep))
    return ep.read("obs", np.arange(n))
