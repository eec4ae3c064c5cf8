"""The episode store: round trip, bounded random access, corrupt and foreign files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from worldmodels.data.store import (
    EPISODES_DIR,
    EpisodeStore,
    StoreError,
    StoreWriter,
    episode_filename,
)

IDENTITY = {"env": "test", "policy": "none"}


def make_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
        "actions": rng.standard_normal((n, 3)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "terminated": np.arange(n) == n - 1,
        "truncated": np.zeros(n, bool),
    }


@pytest.fixture
def store_dir(tmp_path):
    writer = StoreWriter(tmp_path / "s", "episodes", IDENTITY)
    for i, n in enumerate([5, 9, 3]):
        writer.add(i, make_arrays(n, i), {"return": float(i)})
    return tmp_path / "s"


def test_round_trip(store_dir):
    store = EpisodeStore(store_dir)
    assert len(store) == 3 and store.num_steps == 17
    assert list(store.lengths) == [5, 9, 3]
    for i, n in enumerate([5, 9, 3]):
        expected = make_arrays(n, i)
        ep = store[i]
        assert ep.meta == {"return": float(i)} and len(ep) == n
        for key, arr in expected.items():
            np.testing.assert_array_equal(ep[key], arr)
            assert ep[key].dtype == arr.dtype
    store.verify()


def test_files_get_the_usual_permissions(store_dir):
    mask = os.umask(0)
    os.umask(mask)
    for path in (store_dir / "manifest.json", store_dir / EPISODES_DIR / episode_filename(0)):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_arrays_are_memory_mapped_not_loaded(store_dir):
    obs = EpisodeStore(store_dir)[1]["obs"]
    assert isinstance(obs, np.memmap) and not obs.flags.writeable


def test_random_access_to_frames_and_windows(store_dir):
    store = EpisodeStore(store_dir)
    steps = np.array([16, 0, 5, 13, 4])
    eps, local = store.locate(steps)
    assert list(eps) == [2, 0, 1, 1, 0] and list(local) == [2, 0, 0, 8, 4]
    frames = store.get_frames(steps)
    for row, (e, t) in enumerate(zip(eps, local, strict=True)):
        np.testing.assert_array_equal(frames[row], make_arrays(store.lengths[e], e)["obs"][t])
    window = store[1]["actions"][2:7]
    np.testing.assert_array_equal(window, make_arrays(9, 1)["actions"][2:7])
    with pytest.raises(IndexError):
        store.locate(np.array([17]))


def test_a_small_cache_still_reads_everything(store_dir):
    store = EpisodeStore(store_dir, cache_size=1)
    assert store.get_frames(np.arange(17)).shape == (17, 64, 64, 3)


def test_truncated_file_is_named(store_dir):
    path = store_dir / EPISODES_DIR / episode_filename(1)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(StoreError, match=r"ep_000001\.wm: truncated"):
        EpisodeStore(store_dir)


def test_garbage_file_is_named(store_dir):
    (store_dir / EPISODES_DIR / episode_filename(7)).write_bytes(b"not numpy at all" * 10)
    with pytest.raises(StoreError, match=r"ep_000007\.wm: not an episode file"):
        EpisodeStore(store_dir)


def test_corrupt_header_is_named(store_dir):
    path = store_dir / EPISODES_DIR / episode_filename(0)
    data = bytearray(path.read_bytes())
    data[20:30] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"ep_000000\.wm: corrupt episode header"):
        EpisodeStore(store_dir)


def test_flipped_bits_fail_the_checksum(store_dir):
    path = store_dir / EPISODES_DIR / episode_filename(2)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to the last array
    path.write_bytes(bytes(data))
    store = EpisodeStore(store_dir)  # headers are fine
    with pytest.raises(StoreError, match=r"ep_000002\.wm: array .* fails its checksum"):
        store.verify()


def test_bad_files_can_be_skipped_with_a_warning(store_dir):
    path = store_dir / EPISODES_DIR / episode_filename(1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ep_000001"):
        store = EpisodeStore(store_dir, on_error="skip")
    assert store.indices == [0, 2]


def test_foreign_file_is_named(store_dir):
    (store_dir / EPISODES_DIR / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match=r"notes\.txt: unexpected file"):
        EpisodeStore(store_dir)


def test_half_written_temp_files_are_ignored_and_cleaned(store_dir):
    tmp = store_dir / EPISODES_DIR / ".ep_000003.wm.abc123.tmp"
    tmp.write_bytes(b"half an episode")
    assert len(EpisodeStore(store_dir)) == 3
    StoreWriter(store_dir, "episodes", IDENTITY)  # reopening to resume cleans up
    assert not tmp.exists()


def test_missing_and_foreign_stores(tmp_path, store_dir):
    with pytest.raises(StoreError, match="no such store folder"):
        EpisodeStore(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_bytes(b"jpeg")
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore(tmp_path / "other")
    with pytest.raises(StoreError, match="not an episode store"):
        StoreWriter(tmp_path / "other", "episodes", IDENTITY)
    assert (tmp_path / "other" / "photo.jpg").read_bytes() == b"jpeg"
    (store_dir / "manifest.json").write_text("{broken")
    with pytest.raises(StoreError, match="manifest.json is not valid JSON"):
        EpisodeStore(store_dir)


def test_writer_refuses_other_settings_and_duplicates(store_dir):
    with pytest.raises(StoreError, match="different settings .*policy"):
        StoreWriter(store_dir, "episodes", {**IDENTITY, "policy": "brownian"})
    writer = StoreWriter(store_dir, "episodes", IDENTITY)
    assert writer.existing_indices() == {0, 1, 2}
    with pytest.raises(StoreError, match="already exists"):
        writer.add(1, make_arrays(2, 0))
