"""The encoding pass: episode store + V -> series store of (mu, logvar) with the actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels.cli import main
from worldmodels.config import VAEConfig
from worldmodels.data.store import EpisodeStore, StoreError
from worldmodels.utils.io import file_digest
from worldmodels.vision.encode import encode_store
from worldmodels.vision.train import save_vae
from worldmodels.vision.vae import ConvVAE, frames_to_input


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "vae.pt"
    save_vae(ConvVAE(32), VAEConfig(), path)
    return path


def test_series_holds_the_encoders_mu_and_logvar(small_store, vae_file, tmp_path):
    out = tmp_path / "series"
    summary = encode_store(small_store, vae_file, out, batch_size=50, progress=False)
    assert (summary.episodes_new, summary.episodes_total, summary.frames_new) == (6, 6, 480)

    source, series = EpisodeStore(small_store), EpisodeStore(out)
    assert series.kind == "series" and series.indices == source.indices
    manifest = series.manifest
    assert manifest["z_size"] == 32 and manifest["action_size"] == 3
    assert manifest["source"] == str(small_store)
    assert manifest["identity"] == {
        **source.manifest["identity"],
        "z_size": 32,
        "vae": file_digest(vae_file),
    }
    model = ConvVAE(32)
    model.load_state_dict(torch.load(vae_file, weights_only=True)["state_dict"])
    model.eval()
    for src, enc in zip(source, series, strict=True):
        assert enc.meta == src.meta and len(enc) == len(src) == 80
        assert enc["mu"].dtype == enc["logvar"].dtype == np.float16
        assert enc["mu"].shape == enc["logvar"].shape == (80, 32)
        with torch.inference_mode():
            mu, logvar = model.encode(frames_to_input(np.array(src["obs"])))
        # float16 keeps 11 significant bits: relative error <= 2**-11
        np.testing.assert_allclose(enc["mu"].astype(np.float32), mu.numpy(), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(
            enc["logvar"].astype(np.float32), logvar.numpy(), rtol=1e-3, atol=1e-5
        )
        for name in ("actions", "rewards", "terminated", "truncated"):
            assert np.array_equal(enc[name], src[name]), name


def test_encode_resumes_and_refuses_another_model(small_store, vae_file, tmp_path):
    out = tmp_path / "series"
    encode_store(small_store, vae_file, out, progress=False)
    kept = EpisodeStore(out).files
    mtimes = [f.stat().st_mtime_ns for f in kept]
    kept[2].unlink()  # as if the run had been killed before writing this one
    summary = encode_store(small_store, vae_file, out, progress=False)
    assert (summary.episodes_new, summary.episodes_total) == (1, 6)
    assert [f.stat().st_mtime_ns for i, f in enumerate(kept) if i != 2] == mtimes[:2] + mtimes[3:]

    other = tmp_path / "other.pt"
    save_vae(ConvVAE(16), VAEConfig(z_size=16), other)
    with pytest.raises(StoreError, match="different settings"):
        encode_store(small_store, other, out, progress=False)


def test_mirror_also_stores_the_encoding_of_the_flipped_frames(small_store, vae_file, tmp_path):
    out = tmp_path / "series"
    argv = ["encode", "--store", str(small_store), "--vae", str(vae_file), "--out", str(out)]
    assert main([*argv, "--mirror", "--no-progress"]) == 0
    source, series = EpisodeStore(small_store), EpisodeStore(out)
    assert series.manifest["identity"]["mirror"] is True
    model = ConvVAE(32)
    model.load_state_dict(torch.load(vae_file, weights_only=True)["state_dict"])
    model.eval()
    for src, enc in zip(source, series, strict=True):
        obs = np.array(src["obs"])
        with torch.inference_mode():
            mu, logvar = model.encode(frames_to_input(np.ascontiguousarray(obs[:, :, ::-1])))
            mu_real, _ = model.encode(frames_to_input(obs))
        np.testing.assert_allclose(enc["mu_mirror"].astype(np.float32), mu.numpy(), 1e-3, 1e-5)
        np.testing.assert_allclose(
            enc["logvar_mirror"].astype(np.float32), logvar.numpy(), 1e-3, 1e-5
        )
        np.testing.assert_allclose(enc["mu"].astype(np.float32), mu_real.numpy(), 1e-3, 1e-5)
        assert np.array_equal(enc["actions"], src["actions"])  # M negates the steering itself
    # a store is all mirrored or not at all
    with pytest.raises(StoreError, match="different settings"):
        encode_store(small_store, vae_file, out, progress=False)


def test_encode_errors(small_store, vae_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="vae.pt"):
        encode_store(small_store, tmp_path / "run" / "vae.pt", tmp_path / "s", progress=False)
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=f"{corrupt}.*corrupt"):
        encode_store(small_store, corrupt, tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="not an episode store"):
        encode_store(tmp_path, vae_file, tmp_path / "s", progress=False)


def test_cli_encode(small_store, vae_file, tmp_path, capsys):
    out = tmp_path / "series"
    argv = ["encode", "--store", str(small_store), "--vae", str(vae_file), "--out", str(out)]
    assert main([*argv, "--batch-size", "64", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("encoded 6 episodes (480 frames)") and "holds 6 episodes" in line
    assert main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("encoded 0 episodes")

    missing = ["encode", "--store", str(small_store), "--vae", str(tmp_path / "x" / "vae.pt")]
    assert main([*missing, "--out", str(tmp_path / "s2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldmodels encode: error:") and "vae.pt" in err and "\n" not in err


def corrupt_middle(path, nbytes=100):
    """Zero ``nbytes`` in the middle of a file (a bad disk sector, a bad copy)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + nbytes] = bytes(nbytes)
    path.write_bytes(bytes(data))


def test_corrupt_bytes_inside_an_episode_stop_every_reader_naming_the_file(
    small_store, vae_file, tmp_path, capsys
):
    import shutil

    store = tmp_path / "episodes"
    shutil.copytree(small_store, store)
    good_series = tmp_path / "good-series"
    encode_store(store, vae_file, good_series, progress=False)
    victim = sorted(store.rglob("ep_*.wm"))[2]
    corrupt_middle(victim)
    capsys.readouterr()
    v_args = ["train-vae", "--store", str(store), "--out", str(tmp_path / "v"), "--steps", "2"]
    assert main([*v_args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{victim}: array 'obs' fails its checksum" in err and len(err.splitlines()) == 1
    e_args = ["encode", "--store", str(store), "--vae", str(vae_file)]
    assert main([*e_args, "--out", str(tmp_path / "series"), "--no-progress"]) == 2
    assert f"{victim}: array 'obs' fails its checksum" in capsys.readouterr().err
    series_victim = sorted(good_series.rglob("ep_*.wm"))[1]
    corrupt_middle(series_victim, 8)
    m_args = ["train-mdrnn", "--series", str(good_series), "--out", str(tmp_path / "m")]
    assert main([*m_args, "--steps", "1", "--seq-len", "20", "--no-progress"]) == 2
    assert f"{series_victim}: array" in capsys.readouterr().err
    # the dream's starting frames come from the same series: a dream never starts from bad bytes
    from worldmodels.dream.env import load_initial_latents

    with pytest.raises(StoreError, match=f"{series_victim}: array"):
        load_initial_latents(good_series)
