"""Connecting to Ray, sizing the workers to what the cluster reports, checking every node's code.

Ray is optional: nothing in the package imports it unless ``--ray`` is given, and then only
through :func:`require_ray`. One machine stays the default.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = 'pip install -e ".[ray]"'
LOCAL = "local"
CONNECT_TIMEOUT_S = 5.0


@dataclass
class RaySettings:
    """Where the cluster is and how to cut it into workers.

    ``address``: ``local`` starts a Ray instance on this machine; ``auto`` joins the one
    ``ray start`` made here; ``HOST:PORT`` (or ``ray://HOST:PORT``) joins a remote head.
    ``cpus_per_worker``: CPUs each worker reserves; the worker count is the cluster's CPUs
    divided by it, unless ``workers`` fixes it.
    """

    address: str = LOCAL
    cpus_per_worker: int = 1
    workers: int | None = None
    max_retries: int = 3  # times one chunk of work is re-run after its worker died

    def validate(self) -> None:
        if self.cpus_per_worker < 1:
            raise ValueError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be positive, got {self.workers}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


def settings_from_flag(flag: str | None, **kwargs) -> RaySettings | None:
    """``--ray`` given with no address: ``RAY_ADDRESS`` if set, else a local instance."""
    if flag is None:
        return None
    address = flag or os.environ.get("RAY_ADDRESS") or LOCAL
    settings = RaySettings(address=address, **kwargs)
    settings.validate()
    return settings


def require_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(settings: RaySettings):
    """Join (or start) the cluster; an unreachable address fails within seconds, naming it."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = settings.address
    if address not in (LOCAL, "auto"):
        check_reachable(address)
    try:
        if address == LOCAL:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise ConnectionError(f"cannot join the Ray cluster at {address!r}: {e}") from None
    return ray


def check_reachable(address: str) -> None:
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not HOST:PORT, 'auto' or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e} "
            f"(is `ray start --head` running there, and is port {port} open?)"
        ) from None


def worker_count(ray, settings: RaySettings) -> int:
    if settings.workers is not None:
        return settings.workers
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return max(1, cpus // settings.cpus_per_worker)


def gpus_per_worker(ray, workers: int) -> float:
    gpus = float(ray.cluster_resources().get("GPU", 0))
    return min(1.0, gpus / workers) if gpus else 0.0


@functools.cache
def code_fingerprint() -> str:
    """The package version and a hash of its source: equal on every node, or work is refused."""
    from worldmodels import __version__

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def check_same_code(reports: list[tuple[str, str]]) -> None:
    """``reports``: (node address, fingerprint) from each worker; mismatches name the nodes."""
    mine = code_fingerprint()
    others = sorted({(node, fp) for node, fp in reports if fp != mine})
    if others:
        listed = ", ".join(f"{node} runs worldmodels {fp}" for node, fp in others)
        raise ValueError(
            f"the cluster's nodes run other code than this driver (worldmodels {mine}): {listed}; "
            f"install the same version on every node"
        )


def node_report() -> tuple[str, str]:
    """What a worker tells the driver about where it runs and what code it has."""
    return socket.gethostname(), code_fingerprint()


def run_chunks(ray, workers: list, chunks: list, call, on_done, max_retries: int) -> int:
    """Run every chunk of work on the workers, keeping each busy; returns how many re-runs.

    ``call(worker, chunk)`` submits one chunk and returns its ObjectRef; ``on_done(index,
    result)`` takes each finished chunk's result. A chunk whose worker died (killed process,
    lost node) is handed to another worker and run again, at most ``max_retries`` times;
    Ray restarts the dead worker meanwhile. An exception raised by the work itself is a bug
    or bad input, not a lost worker: it propagates at once.
    """
    from ray.exceptions import RayActorError

    queue = list(range(len(chunks)))
    attempts = [0] * len(chunks)
    pending: dict = {}
    reruns = 0

    def submit(index: int, w: int) -> None:
        pending[call(workers[w], chunks[index])] = (index, w)

    for w in range(min(len(workers), len(queue))):
        submit(queue.pop(0), w)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        index, w = pending.pop(ref)
        try:
            result = ray.get(ref)
        except RayActorError as e:
            attempts[index] += 1
            if attempts[index] > max_retries:
                raise RuntimeError(
                    f"chunk {index} failed {attempts[index]} times, its workers died: {e}"
                ) from None
            reruns += 1
            submit(index, (w + 1) % len(workers))
            continue
        on_done(index, result)
        if queue:
            submit(queue.pop(0), w)
    return reruns


def balanced_chunks(n: int, parts: int) -> list[list[int]]:
    """0..n-1 cut into ``parts`` contiguous runs whose sizes differ by at most one."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]
