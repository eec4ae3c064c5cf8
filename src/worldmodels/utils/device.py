"""Device auto-detection (cuda, mps, cpu) and CPU set-up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; any other name is passed to torch.

    A name torch does not know, or a device that is not there, is a ValueError (a user error).
    On the CPU every core is used and freed memory is kept for reuse (see keep_freed_memory).
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available")
    if device.type == "cpu":
        use_all_cpu_cores()
        keep_freed_memory()
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that says so, or a CPU
    with AVX512-BF16 or AMX (elsewhere bf16 is emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def require_native_bf16(device: torch.device, option: str) -> None:
    """Refuse the speed option ``option`` (bfloat16) where ``device`` would only emulate it."""
    if not bf16_supported(device):
        raise ValueError(
            f"{option} needs native bfloat16 (a CUDA GPU with it, or a CPU with AVX512-BF16 or "
            f"AMX): this {device.type} has none, and with no native bfloat16 it would run slower "
            f"than float32; leave {option} off"
        )


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on ``device`` when ``bf16``, else nothing (a no-op context)."""
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_all_cpu_cores() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    CPU training frees and re-allocates the same 30-60 MB tensors every step; by default glibc
    hands such blocks back to the OS and page-faults them in again, which cost 30-45% of M's
    training time on the CPU (benchmarks/mdrnn.py). The process keeps its peak memory instead.
    Process-wide; returns False (and changes nothing) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
    return bool(ok and libc.mallopt(m_top_pad, 64 << 20))


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
