"""Connecting to Ray, sizing the workers to what the cluster reports, checking every node's code.

Ray is optional: nothing in the package imports it unless ``--ray`` is given, and then only
through :func:`require_ray`. One machine stays the default.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = 'pip install -e ".[ray]"'
LOCAL = "local"
CONNECT_TIMEOUT_S = 5.0  # TCP reach of a head's address
# what a gRPC server (Ray's head, or its ray:// client server) answers to HTTP/2's preface
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4
RESTART_POLL_S = 0.5  # between asks to a worker Ray is restarting


class ClusterError(ConnectionError):
    """The cluster cannot do what was asked within the time allowed (named in the message)."""


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
    # seconds with no chunk finished (or no worker started) before giving up: a worker that
    # cannot be placed again (its node gone, no other with room) would be waited for forever
    stall_timeout_s: float = 600.0
    connect_timeout_s: float = 60.0  # ray.init against an address that answers

    def validate(self) -> None:
        if self.cpus_per_worker < 1:
            raise ValueError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be positive, got {self.workers}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not (self.stall_timeout_s > 0 and self.connect_timeout_s > 0):
            raise ValueError(
                f"timeouts must be positive, got stall {self.stall_timeout_s}, connect "
                f"{self.connect_timeout_s}"
            )


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
    """Join (or start) the cluster. An unreachable address, or one that answers but is not
    Ray, fails within seconds naming it; a join that hangs ends after ``connect_timeout_s``."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = settings.address
    if address not in (LOCAL, "auto"):
        check_reachable(address)
        check_speaks_grpc(address)
    if address == LOCAL:
        # started from this thread: Ray ties its GCS and raylet to the life of the thread that
        # starts them (the parent-death signal fires when that thread ends), so a start in a
        # helper thread would leave an instance that dies as soon as it is up
        atexit.register(stop_local_ray, ray)
        start_reaper()  # first: it notes the instance's processes as they start
        with command_keeps_sigterm(ray):  # "local": never another instance running here
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return ray
    kwargs = {"address": address, "log_to_driver": False}
    outcome: list = []

    def join() -> None:
        try:
            ray.init(**kwargs)
            outcome.append(None)
        except BaseException as e:  # handed to the caller's thread
            outcome.append(e)

    thread = threading.Thread(target=join, name="ray-init", daemon=True)
    thread.start()
    thread.join(settings.connect_timeout_s)
    if not outcome:
        raise ClusterError(
            f"joining the Ray cluster at {address!r} did not finish within "
            f"{settings.connect_timeout_s:g} s (is it a Ray head of the same Ray version?)"
        )
    if isinstance(outcome[0], ConnectionError):
        raise ConnectionError(f"cannot join the Ray cluster at {address!r}: {outcome[0]}") from None
    if outcome[0] is not None:
        raise outcome[0]
    return ray


def stop_local_ray(ray) -> None:
    """At exit of a command that started its own Ray instance: shut it down, then end what
    Ray leaves running (its dashboard and runtime-env agents outlive a graceful shutdown;
    they would stay, reparented, after a SIGTERM'd command). After a SIGKILL no code of the
    command runs: the reaper (``start_reaper``) ends them instead."""
    import psutil

    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    alive = [p for p in started if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@contextlib.contextmanager
def command_keeps_sigterm(ray):
    """``ray.init`` in the main thread installs SIGTERM handlers that exit on the spot (status
    15, no message, past the command's own handling); the command's handler (stop as Ctrl-C
    does, keep finished work) stays in force, also while the instance starts."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    install = getattr(utils, "set_sigterm_handler", None)
    handler = signal.getsignal(signal.SIGTERM)
    if install is not None:
        utils.set_sigterm_handler = lambda _handler: None
    try:
        yield
    finally:
        if install is not None:
            utils.set_sigterm_handler = install
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def start_reaper() -> subprocess.Popen:
    """A process that ends this local Ray instance's agents and workers if this command dies
    without running its exit handlers (SIGKILL; see ``distributed/reaper.py``). The processes
    Ray starts from now on inherit ``OWNER_VARIABLE``: the reaper finds those it had no time
    to see below the command (one started in its last half second) by that mark."""
    from worldmodels.distributed.reaper import OWNER_VARIABLE

    os.environ[OWNER_VARIABLE] = str(os.getpid())
    return subprocess.Popen(
        [sys.executable, "-m", "worldmodels.distributed.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # out of the terminal's process group: a Ctrl-C is not for it
    )


def split_address(address: str) -> tuple[str, int]:
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not HOST:PORT, 'auto' or 'local'")
    return host, int(port)


def check_reachable(address: str) -> None:
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e} "
            f"(is `ray start --head` running there, and is port {port} open?)"
        ) from None


def check_speaks_grpc(address: str) -> None:
    """Ray's head (GCS) and its client server are gRPC: they answer HTTP/2's preface with a
    SETTINGS frame. Anything else on that port (a web server, a database, a silent listener)
    is named at once instead of leaving ``ray.init`` to retry for minutes."""
    host, port = split_address(address)
    reply = b""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.sendall(HTTP2_PREFACE)
            while len(reply) < 9:
                part = sock.recv(9 - len(reply))
                if not part:
                    break
                reply += part
    except OSError:
        pass  # a timeout or reset: judged by what arrived
    if len(reply) < 9 or reply[3] != HTTP2_SETTINGS:
        raise ClusterError(
            f"{address} answers but is not a Ray head: it does not speak gRPC (no HTTP/2 "
            f"settings in reply within {CONNECT_TIMEOUT_S:g} s); give the head's GCS port "
            "(6379 by default) or its ray:// client port (10001)"
        )


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


def cluster_state(ray) -> str:
    """What the cluster has now, for error messages: alive nodes and their CPUs."""
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
        return f"the cluster has {len(alive)} alive node(s) with {cpus:g} CPUs"
    except Exception:  # the message must not fail while reporting a failure
        return "the cluster's state could not be read"


def get_within(ray, refs: list, settings: RaySettings, what: str) -> list:
    """``ray.get(refs)``, or a ClusterError after ``stall_timeout_s`` naming what is missing."""
    from ray.exceptions import GetTimeoutError

    try:
        return ray.get(refs, timeout=settings.stall_timeout_s)
    except GetTimeoutError:
        raise ClusterError(
            f"{what} did not answer within {settings.stall_timeout_s:g} s; "
            f"{cluster_state(ray)}, each worker needs {settings.cpus_per_worker} "
            "(add nodes, use fewer workers, or raise the stall timeout)"
        ) from None


def run_chunks(ray, workers: list, chunks: list, call, on_done, settings: RaySettings) -> int:
    """Run every chunk of work on the workers, keeping each busy; returns how many re-runs.

    ``call(worker, chunk)`` submits one chunk and returns its ObjectRef; ``on_done(index,
    result)`` takes each finished chunk's result. A chunk whose worker died (killed process,
    lost node) is handed to another worker and run again, at most ``settings.max_retries``
    times; Ray restarts the dead worker meanwhile. If no chunk finishes for
    ``settings.stall_timeout_s`` (a dead worker that cannot be placed again: no node left with
    room), a ClusterError names the waiting chunks and what the cluster has. An exception
    raised by the work itself is a bug or bad input, not a lost worker: it propagates at once.
    """
    from ray.exceptions import RayActorError

    unavailable = getattr(ray.exceptions, "ActorUnavailableError", ())
    queue = list(range(len(chunks)))
    attempts = [0] * len(chunks)
    pending: dict = {}
    reruns = 0
    last_progress = time.monotonic()

    def submit(index: int, w: int) -> None:
        pending[call(workers[w], chunks[index])] = (index, w)

    for w in range(min(len(workers), len(queue))):
        submit(queue.pop(0), w)
    while pending:
        left = settings.stall_timeout_s - (time.monotonic() - last_progress)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(left, 0.0))
        if not ready:
            waiting = sorted(index for index, _ in pending.values())
            raise ClusterError(
                f"no chunk of work finished in {settings.stall_timeout_s:g} s (waiting on "
                f"chunk(s) {waiting} of {len(chunks)}); {cluster_state(ray)}, each worker "
                f"needs {settings.cpus_per_worker}: a lost node's workers cannot be placed "
                "again (add nodes, or raise the stall timeout for slow work)"
            )
        (ref,) = ready
        index, w = pending.pop(ref)
        try:
            result = ray.get(ref)
        except unavailable:
            # the worker is being restarted (Ray answers at once): not a new death, so no
            # retry is spent; ask again shortly, until it is back or the stall timeout ends it
            time.sleep(RESTART_POLL_S)
            submit(index, (w + 1) % len(workers))
            continue
        except RayActorError as e:
            attempts[index] += 1
            if attempts[index] > settings.max_retries:
                raise RuntimeError(
                    f"chunk {index} failed {attempts[index]} times, its workers died: {e}"
                ) from None
            reruns += 1
            submit(index, (w + 1) % len(workers))
            continue
        on_done(index, result)
        last_progress = time.monotonic()
        if queue:
            submit(queue.pop(0), w)
    return reruns


def balanced_chunks(n: int, parts: int) -> list[list[int]]:
    """0..n-1 cut into ``parts`` contiguous runs whose sizes differ by at most one."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]
