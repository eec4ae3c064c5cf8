"""Benchmark: training M (the MDN-RNN) in sequence-steps per second (batch x seq_len / s).

Times the whole optimizer step of ``worldmodels.memory.train.train_step`` (teacher-forced
forward, mixture NLL, backward, clip_grad_norm_, Adam) on the paper's CarRacing model
(z 32, action 3, LSTM 256, 5 gaussians) at sequence length 999, and the batch gather of
``WindowSampler`` (memory-mapped reads + z re-sampling) from a synthetic series store.
CPU always, CUDA when present. Run: ``python benchmarks/mdrnn.py`` (under a minute on 2 cores).

The CPU rows are repeated after ``keep_freed_memory()`` (which ``pick_device`` applies to every
CPU run of this package): glibc otherwise hands the big per-step tensors (tens of MB at batch
100) back to the OS and page-faults them in again every step, which on a 2-core machine costs
a quarter to a third of the step time. The plain rows are the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import MDNRNNConfig
from worldmodels.data.store import StoreWriter
from worldmodels.memory.data import WindowSampler, open_series
from worldmodels.memory.train import build_mdrnn, train_step
from worldmodels.utils.device import keep_freed_memory
from worldmodels.utils.training import Checkpointer

Z, A = 32, 3


def make_series(path: Path, episodes: int, length: int) -> Path:
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, "series", {"bench": 1}, extra={"z_size": Z, "action_size": A})
    for i in range(episodes):
        writer.add(
            i,
            {
                "mu": rng.standard_normal((length, Z)).astype(np.float16),
                "logvar": np.full((length, Z), -2.0, np.float16),
                "actions": rng.uniform(-1, 1, (length, A)).astype(np.float32),
                "rewards": rng.standard_normal(length).astype(np.float32),
                "terminated": np.zeros(length, bool),
                "truncated": np.zeros(length, bool),
            },
        )
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(sampler, config, device, steps: int, folder: Path) -> float:
    """Sequence-steps/s of whole training steps (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_mdrnn(config, Z, A).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    checkpoints = Checkpointer(folder)
    batches = [sampler.batch(i, device) for i in range(steps + 1)]  # data timed apart
    train_step(model, optimizer, batches[0], config, 0, checkpoints)
    sync(device)
    start = time.perf_counter()
    for i, batch in enumerate(batches[1:], 1):
        train_step(model, optimizer, batch, config, i, checkpoints)
    sync(device)
    return steps * config.batch_size * config.seq_len / (time.perf_counter() - start)


def time_gather(sampler, config, device, steps: int) -> float:
    sampler.batch(0, device)
    sync(device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        sampler.batch(i, device)
    sync(device)
    return steps * config.batch_size * config.seq_len / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="16x999,100x999", help="BATCHxSEQ,... to time")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per shape")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--no-malloc-rows", action="store_true", help="skip the mallopt rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name()}")
    header = f"{'device':<14}{'batch':>6}{'seq':>6}{'train seq-steps/s':>19}{'s/step':>8}"
    print(header + f"{'gather seq-steps/s':>20}")
    with tempfile.TemporaryDirectory() as tmp:
        info = open_series(make_series(Path(tmp) / "series", episodes=24, length=1000))

        def rows(device: torch.device, label: str) -> None:
            for batch, seq in shapes:
                config = MDNRNNConfig(batch_size=batch, seq_len=seq)
                sampler = WindowSampler(info, seq, batch, val_episodes=0)
                train = time_training(sampler, config, device, args.steps, Path(tmp) / "ckpt")
                gather = time_gather(sampler, config, device, max(args.steps, 5))
                row = f"{label:<14}{batch:>6}{seq:>6}{train:>19,.0f}"
                print(row + f"{batch * seq / train:>8.2f}{gather:>20,.0f}", flush=True)

        for device in devices:
            rows(device, device.type)
        if not args.no_malloc_rows and keep_freed_memory():
            rows(torch.device("cpu"), "cpu+mallopt")


if __name__ == "__main__":
    main()
