"""Collection into a store: real environments, resume after a kill, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worldmodels.cli import main
from worldmodels.config import CollectConfig
from worldmodels.data.store import EPISODES_DIR, EpisodeStore, load_manifest
from worldmodels.execution import collect


def test_collect_writes_a_complete_store(small_store):
    store = EpisodeStore(small_store)
    assert len(store) == 6 and store.indices == list(range(6))
    manifest = load_manifest(small_store)
    assert manifest["kind"] == "episodes" and manifest["episodes"] == 6
    assert manifest["identity"]["policy"] == "brownian"
    assert manifest["config"]["max_steps"] == 80
    for ep in store:
        assert ep["obs"].shape == (80, 64, 64, 3) and ep["obs"].dtype == np.uint8
        assert ep["actions"].shape == (80, 3) and ep["rewards"].shape == (80,)
        assert ep["truncated"][-1] and not ep["truncated"][:-1].any()
        assert np.isclose(ep.meta["return"], ep["rewards"].sum(), atol=1e-3)
    store.verify()


def test_gymnasium_episodes_depend_only_on_their_seed(tmp_path):
    base = dict(backend="gymnasium", max_steps=15, seed=3, workers=0)
    collect(CollectConfig(episodes=3, num_envs=3, **base), str(tmp_path / "a"), progress=False)
    collect(CollectConfig(episodes=3, num_envs=1, **base), str(tmp_path / "b"), progress=False)
    a, b = EpisodeStore(tmp_path / "a"), EpisodeStore(tmp_path / "b")
    for i in range(3):
        assert a[i].meta["seed"] == 3 + i
        for key in ("obs", "actions", "rewards"):
            np.testing.assert_array_equal(a[i][key], b[i][key])


def test_resume_after_a_kill_keeps_finished_episodes_and_adds_no_duplicates(tmp_path):
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "worldmodels",
        "collect",
        "--out",
        str(out),
        "--backend",
        "gymnasium",
        "--episodes",
        "6",
        "--max-steps",
        "40",
        "--num-envs",
        "2",
        "--workers",
        "0",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    episodes = out / EPISODES_DIR
    while time.time() < deadline:
        if episodes.is_dir() and len(list(episodes.glob("ep_*.wm"))) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-episode: two slots are always running
    proc.wait()
    kept = sorted(p.name for p in episodes.glob("ep_*.wm"))
    assert 2 <= len(kept) < 6, kept
    before = {name: (episodes / name).read_bytes() for name in kept}
    (episodes / ".ep_000005.wm.x1y2.tmp").write_bytes(b"half an episode")

    assert main(cmd[3:]) == 0
    store = EpisodeStore(out)
    assert store.indices == list(range(6))
    assert not list(episodes.glob("*.tmp"))
    for name, data in before.items():  # finished episodes are kept as they were
        assert (episodes / name).read_bytes() == data
    store.verify()


def test_cli_collect_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "s"
    args = [
        "collect",
        "--out",
        str(out),
        "--backend",
        "gymnasium",
        "--episodes",
        "2",
        "--max-steps",
        "10",
        "--policy",
        "random_weights",
        "--num-envs",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "collected 2 episodes (20 frames)" in capsys.readouterr().out
    assert main(args) == 0  # nothing left to do
    assert "collected 0 episodes" in capsys.readouterr().out
    assert main(["info", str(out), "--verify"]) == 0
    assert "episodes: 2, steps: 20" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--env", "pong"], "unknown env 'pong'"),
        (["--backend", "mujoco"], "unknown backend 'mujoco'"),
        (["--policy", "zigzag"], "unknown policy 'zigzag'"),
        (["--workers", "-1"], "workers must be >= 0"),
    ],
)
def test_cli_bad_names_give_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "s"
    assert main(["collect", "--out", str(out), "--backend", "gymnasium", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--episodes", "--max-steps", "--num-envs"])
def test_cli_non_positive_counts_are_refused(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["collect", "--out", str(tmp_path / "s"), flag, "0"])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_cli_refuses_a_folder_that_is_not_a_store(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    assert main(["collect", "--out", str(folder), "--backend", "gymnasium"]) == 2
    assert "not an episode store" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


def test_cli_refuses_an_unwritable_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["collect", "--out", str(blocker / "store"), "--backend", "gymnasium"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "a-file" in err
    assert blocker.read_text() == "x"


def test_cli_refuses_to_mix_settings_in_one_store(small_store, capsys):
    before = sorted(Path(small_store, EPISODES_DIR).iterdir())
    assert main(["collect", "--out", str(small_store), "--policy", "random_weights"]) == 2
    assert "different settings" in capsys.readouterr().err
    assert sorted(Path(small_store, EPISODES_DIR).iterdir()) == before
