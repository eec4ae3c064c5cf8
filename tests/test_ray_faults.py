"""Ray faults that used to hang: a lost node whose workers cannot be placed again, workers that
cannot start, and an address that answers but is not Ray. Each must end, naming what is
missing, within the time allowed. Real Ray (a two-node local cluster), real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from worldmodels.distributed.cluster import (
    ClusterError,
    RaySettings,
    check_speaks_grpc,
    get_within,
    run_chunks,
)

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')


def sleeper_class():
    """An actor class defined here, so Ray ships it by value (workers cannot import tests)."""

    class Sleeper:
        def work(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    return Sleeper


@pytest.fixture
def two_node_cluster():
    """A head with no CPUs and one worker node with one: work can only run on the worker."""
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, node
    ray.shutdown()
    cluster.shutdown()


def test_a_lost_node_ends_the_wait_with_the_cluster_named(two_node_cluster):
    cluster, node = two_node_cluster
    check_speaks_grpc(cluster.address)  # a real head passes the probe that refuses non-Ray
    settings = RaySettings(address="auto", stall_timeout_s=15, max_retries=3)
    worker = ray.remote(sleeper_class()).options(num_cpus=1, max_restarts=-1, max_task_retries=0)
    workers = [worker.remote()]
    assert ray.get(workers[0].work.remote(0)) == 0  # placed and working
    done = []
    threading.Timer(2.0, cluster.remove_node, (node,)).start()
    start = time.monotonic()
    with pytest.raises(ClusterError) as e:
        run_chunks(
            ray,
            workers,
            [5.0, 5.0],
            lambda w, seconds: w.work.remote(seconds),
            lambda i, r: done.append(i),
            settings,
        )
    waited = time.monotonic() - start
    assert "no chunk of work finished in 15 s" in str(e.value)
    assert "0 CPUs" in str(e.value) and "lost node" in str(e.value)
    assert done == [] and waited < 15 + 30  # bounded: the stall timeout plus Ray's own time


def test_workers_that_cannot_start_are_named(two_node_cluster):
    settings = RaySettings(address="auto", cpus_per_worker=4, stall_timeout_s=5)
    big = ray.remote(sleeper_class()).options(num_cpus=4)
    start = time.monotonic()
    with pytest.raises(
        ClusterError,
        match="the test workers did not answer within 5 s; the cluster has 2 alive node",
    ):
        get_within(ray, [big.remote().work.remote(0)], settings, "the test workers")
    assert time.monotonic() - start < 20


@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never says anything (not a Ray head)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_port_that_is_not_ray_is_named_within_seconds(silent_listener, tmp_path):
    address = f"127.0.0.1:{silent_listener}"
    with pytest.raises(ClusterError, match="answers but is not a Ray head"):
        check_speaks_grpc(address)
    start = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "worldmodels",
            "collect",
            "--out",
            str(tmp_path / "eps"),
            "--episodes",
            "1",
            "--ray",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert f"{address} answers but is not a Ray head" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60
