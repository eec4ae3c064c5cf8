"""Device auto-detection (cuda, mps, cpu) and CPU thread set-up."""

from __future__ import annotations

import contextlib
import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; any other name is passed to torch."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    use_all_cpu_cores()
    return torch.device("cpu")


def use_all_cpu_cores() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, then restore the previous count.

    For light tensor work beside environment threads: idle OpenMP threads spin-wait for a
    while after each parallel region, and on a small machine that spinning takes the very
    cores the environments need.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
