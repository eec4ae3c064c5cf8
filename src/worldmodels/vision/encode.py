"""The encoding pass: every frame of an episode store through V into a series store.

A series episode holds ``mu`` and ``logvar`` (float16, (N, z)) with the episode's ``actions``,
``rewards``, ``terminated`` and ``truncated``, under the same episode index and meta as the
source. The series manifest's identity is the source's plus the z size and a digest of the
``vae.pt`` file, so a series store never mixes encodings of two models. Episodes already
encoded are skipped: a killed run started again finishes the rest.

With ``mirror`` (CarRacing), each episode also holds ``mu_mirror`` and ``logvar_mirror``, the
encoding of its frames flipped left-right (``envs.carracing.mirror_frames``), so that M can
learn the mirrored episode too (``MDNRNNConfig.mirror``); the manifest's identity then says
``mirror: true``, so a store never mixes episodes with and without them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldmodels.data.store import EpisodeStore, StoreError, StoreWriter
from worldmodels.envs.carracing import check_mirrorable, mirror_frames
from worldmodels.utils.device import pick_device
from worldmodels.utils.io import file_digest
from worldmodels.vision.data import open_frame_store
from worldmodels.vision.train import VAE_FILE, load_vae
from worldmodels.vision.vae import ConvVAE, frames_to_input

CARRIED = ("actions", "rewards", "terminated", "truncated")


@dataclass
class EncodeSummary:
    episodes_new: int
    episodes_total: int
    frames_new: int
    seconds: float
    device: str
    out: Path

    @property
    def images_per_second(self) -> float:
        return self.frames_new / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"encoded {self.episodes_new} episodes ({self.frames_new} frames) in "
            f"{self.seconds:.1f} s, {self.images_per_second:.0f} images/s on {self.device}; "
            f"series store {self.out} holds {self.episodes_total} episodes"
        )


@torch.inference_mode()
def encode_frames(
    model: ConvVAE, frames: np.ndarray, device: torch.device | str, batch_size: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 64, 64, 3) frames -> (mu, logvar), float32 numpy arrays of shape (N, z)."""
    mus, logvars = [], []
    for start in range(0, len(frames), batch_size):
        x = frames_to_input(torch.from_numpy(frames[start : start + batch_size]), device)
        mu, logvar = model.encode(x)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


def check_carried(store: EpisodeStore) -> None:
    """Every episode must hold the arrays a series carries over (headers only: cheap)."""
    for ep in store:
        missing = [name for name in CARRIED if name not in ep.keys]
        if missing:
            raise StoreError(f"{ep.path}: the episode has no {', '.join(missing)} array(s)")


def read_episode(store: EpisodeStore, position: int) -> dict[str, np.ndarray]:
    """The frames and carried arrays of one episode, read into memory."""
    ep = store[position]
    return {name: ep.read(name) for name in ("obs", *CARRIED)}


def open_series(
    store: EpisodeStore, vae_path: Path, z_size: int, out_path, mirror: bool
) -> StoreWriter:
    actions_shape, _ = store[0].array_spec("actions")
    identity = {**store.manifest["identity"], "z_size": z_size, "vae": file_digest(vae_path)}
    if mirror:
        identity["mirror"] = True
    extra = {
        "z_size": z_size,
        "action_size": int(np.prod(actions_shape[1:], dtype=np.int64)),
        "source": str(store.path),
    }
    return StoreWriter(out_path, "series", identity, extra=extra)


def encode_store(
    store_path: str | Path,
    vae_path: str | Path,
    out_path: str | Path,
    batch_size: int = 1000,
    device: str = "auto",
    progress: bool = True,
    mirror: bool = False,
) -> EncodeSummary:
    """Encode every episode of ``store_path`` not yet in the series store ``out_path``
    (with ``mirror``, its mirror image too: module doc)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    vae_path = Path(vae_path)
    if vae_path.is_dir():
        vae_path = vae_path / VAE_FILE
    store = open_frame_store(store_path)
    check_carried(store)
    if mirror:
        check_mirrorable(store)
    dev = pick_device(device)
    model = load_vae(vae_path, dev)
    writer = open_series(store, vae_path, model.z_size, out_path, mirror)
    done = writer.existing_indices()
    todo = [pos for pos, index in enumerate(store.indices) if index not in done]

    start = time.perf_counter()
    frames = encode_episodes(model, store, todo, writer, dev, batch_size, progress, mirror)
    total = len(writer.existing_indices())
    writer.write_manifest(episodes=total)
    return EncodeSummary(
        len(todo), total, frames, time.perf_counter() - start, str(dev), Path(out_path)
    )


def encode_episodes(
    model, store, todo: list[int], writer, device, batch_size, progress, mirror=False
) -> int:
    """Encode the episodes at positions ``todo`` into ``writer``; returns the frame count."""
    frames = 0
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="encode", unit="ep", disable=not progress)
    with ThreadPoolExecutor(1, thread_name_prefix="read") as pool:
        ahead = pool.submit(read_episode, store, todo[0]) if todo else None
        try:
            for i, pos in enumerate(todo):
                arrays = ahead.result()
                if i + 1 < len(todo):  # read the next episode while this one is encoded
                    ahead = pool.submit(read_episode, store, todo[i + 1])
                obs = arrays.pop("obs")
                mu, logvar = encode_frames(model, obs, device, batch_size)
                series = {"mu": mu.astype(np.float16), "logvar": logvar.astype(np.float16)}
                if mirror:
                    mu_m, logvar_m = encode_frames(model, mirror_frames(obs), device, batch_size)
                    series["mu_mirror"] = mu_m.astype(np.float16)
                    series["logvar_mirror"] = logvar_m.astype(np.float16)
                writer.add(store.indices[pos], {**series, **arrays}, store[pos].meta)
                frames += len(mu)
                bar.update(1)
                bar.set_postfix(img_s=f"{frames / (time.perf_counter() - start):.0f}")
        finally:
            bar.close()
    return frames
