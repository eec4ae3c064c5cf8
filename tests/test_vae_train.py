"""Training V from the episode store: frame streaming, the loop, exact resume, errors, CLI."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from worldmodels.cli import main
from worldmodels.config import VAEConfig, load_config
from worldmodels.data.store import EpisodeStore, StoreError, StoreWriter
from worldmodels.utils import device as device_module
from worldmodels.utils.device import bf16_supported
from worldmodels.utils.training import NonFiniteLossError
from worldmodels.vision import train as train_module
from worldmodels.vision.data import FrameStream, open_frame_store, split_episodes
from worldmodels.vision.train import load_vae, save_vae, train_vae
from worldmodels.vision.vae import ConvVAE


def tb_scalars(folder, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return [e.value for e in events.Scalars(tag)]


def make_store(path, obs_shape=(64, 64, 3), episodes=2, kind="episodes"):
    writer = StoreWriter(path, kind, {"test": True})
    for i in range(episodes):
        n = 10
        arrays = {
            "obs": np.zeros((n, *obs_shape), np.uint8),
            "actions": np.zeros((n, 3), np.float32),
            "rewards": np.zeros(n, np.float32),
            "terminated": np.zeros(n, bool),
            "truncated": np.zeros(n, bool),
        }
        writer.add(i, arrays)
    return path


# --- frame streaming -------------------------------------------------------------------------


def test_read_without_mmap_equals_the_memory_map(small_store):
    store = EpisodeStore(small_store)
    ep = store[1]
    rows = np.array([5, 3, 4, 79, 3, 0])
    assert np.array_equal(ep.read("obs", rows), ep["obs"][rows])
    assert np.array_equal(ep.read("actions"), ep["actions"])
    steps = np.array([400, 3, 81, 250, 3])
    assert np.array_equal(store.get_frames(steps, mmap=False), store.get_frames(steps))
    with pytest.raises(IndexError):
        ep.read("obs", [80])


def test_stream_covers_each_training_frame_once_per_epoch_and_resumes(small_store):
    store = open_frame_store(small_store)
    train, val = split_episodes(store, 2)
    assert list(train) == [0, 1, 2, 3] and list(val) == [4, 5]
    stream = FrameStream(store, train, batch_size=48, seed=1, workers=2, prefetch=2)
    assert stream.batches_per_epoch == 7  # 320 frames: 6 of 48 and one of 32
    batches = stream.batches()
    first = [next(batches) for _ in range(9)]
    batches.close()
    assert [(b.epoch, b.index) for b in first][5:] == [(0, 5), (0, 6), (1, 0), (1, 1)]
    epoch0 = np.concatenate([b.frames.numpy() for b in first[:7]])
    assert len(epoch0) == 320
    expected = store.get_frames(np.sort(stream.order(0)))
    # every training frame exactly once, none of the held-out ones
    order = np.lexsort(epoch0.reshape(len(epoch0), -1).T)
    ref = np.lexsort(expected.reshape(len(expected), -1).T)
    assert np.array_equal(epoch0[order], expected[ref])
    # deterministic, and starting at (epoch, batch) gives the same batches as running through
    resumed = stream.batches(0, 6)
    for want in first[6:]:
        got = next(resumed)
        assert (got.epoch, got.index) == (want.epoch, want.index)
        assert torch.equal(got.frames, want.frames)
    resumed.close()
    assert not np.array_equal(stream.order(0), stream.order(1))


def test_a_mirrored_stream_flips_half_of_each_batch_the_same_way_on_resume(small_store):
    """With mirror, each batch holds the same frames as without, half of them (chosen by
    seed, epoch and batch) flipped left-right; a resumed stream flips the same ones."""
    store = open_frame_store(small_store)
    train, _ = split_episodes(store, 2)
    plain = FrameStream(store, train, batch_size=48, seed=1)
    mirrored = FrameStream(store, train, batch_size=48, seed=1, mirror=True)
    batches = mirrored.batches()
    got = [next(batches) for _ in range(8)]  # into the second epoch
    batches.close()
    flipped_sets = []
    for batch in got:
        real = store.get_frames(plain.batch_steps(batch.epoch, batch.index))
        frames = batch.frames.numpy()
        flipped = np.array([not np.array_equal(f, r) for f, r in zip(frames, real, strict=True)])
        assert flipped.sum() == len(frames) // 2
        assert np.array_equal(frames[flipped], real[flipped][:, :, ::-1])  # width, not height
        assert np.array_equal(frames[~flipped], real[~flipped])
        flipped_sets.append(flipped)
    assert not all(np.array_equal(flipped_sets[0], f) for f in flipped_sets[1:6])
    resumed = mirrored.batches(1, 0)
    again = next(resumed)
    resumed.close()
    assert (again.epoch, again.index) == (1, 0) and torch.equal(again.frames, got[7].frames)


def test_mirror_is_refused_on_data_that_is_not_carracing(tmp_path, capsys):
    path = make_store(tmp_path / "store")  # identity without env: CarRacing is not said
    with pytest.raises(ValueError, match="mirror is for CarRacing"):
        train_vae(path, tmp_path / "run", VAEConfig(max_steps=1, mirror=True), progress=False)
    assert not (tmp_path / "run").exists()
    argv = ["pipeline", "--preset", "doom-smoke", "--out", str(tmp_path / "doom")]
    assert main([*argv, "--set", "mdrnn.mirror=true"]) == 2
    assert "mdrnn.mirror: mirroring is for CarRacing" in capsys.readouterr().err
    assert not (tmp_path / "doom").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: make_store(p, episodes=0), "holds no episodes"),
        (lambda p: make_store(p, obs_shape=(32, 32, 3)), "expected uint8 [N, 64, 64, 3]"),
        (lambda p: make_store(p, kind="series"), "is a 'series' store"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("hi")), "not an episode store"),
    ],
    ids=["empty", "frame-shape", "series", "not-a-store"],
)
def test_bad_stores_are_named(tmp_path, setup, message):
    path = tmp_path / "store"
    setup(path)
    with pytest.raises(StoreError, match="store") as info:
        train_vae(path, tmp_path / "run", VAEConfig(max_steps=1), progress=False)
    assert message in str(info.value) and str(path) in str(info.value)


def test_too_few_episodes_for_validation(small_store, tmp_path):
    with pytest.raises(ValueError, match="too few"):
        train_vae(small_store, tmp_path / "run", VAEConfig(val_episodes=6), progress=False)


# --- training --------------------------------------------------------------------------------


def test_training_on_real_frames_lowers_the_loss(small_store, tmp_path):
    out = tmp_path / "run"
    config = VAEConfig(max_steps=30, batch_size=32, learning_rate=1e-3, log_every=1, val_every=15)
    summary = train_vae(small_store, out, config, progress=False)
    losses = tb_scalars(out / "tb", "train/total")
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert len(tb_scalars(out / "tb", "val/total")) == 2  # at step 15 and at the end
    assert len(tb_scalars(out / "tb", "perf/images_per_second")) == 30
    assert summary.steps == 30 and summary.new_steps == 30
    assert summary.val_loss is not None and np.isfinite(summary.val_loss)
    for name in ("vae.pt", "latest.pt", "config.json", "recon.png", "recon.gif"):
        assert (out / name).is_file(), name
    assert load_config(VAEConfig, out / "config.json") == config
    model = load_vae(out / "vae.pt")
    assert isinstance(model, ConvVAE) and model.z_size == 32 and not model.training
    from PIL import Image

    png = Image.open(out / "recon.png")
    assert png.size == (8 * 128 + 7 * 2, 2 * 128 + 2)
    gif = Image.open(out / "recon.gif")
    assert gif.size == (2 * 256 + 2, 256)
    durations = []  # Pillow merges identical frames into one of a longer duration
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert sum(durations) == 80 * 40
    # a finished run is not overwritten
    with pytest.raises(ValueError, match="finished model"):
        train_vae(small_store, out, config, progress=False)


class Killed(Exception):
    pass


def test_killed_and_resumed_equals_uninterrupted(small_store, tmp_path, monkeypatch):
    # 3 training episodes (240 frames), batch 64: 4 batches an epoch, so the resumed part
    # (steps 4-6) crosses into epoch 1; validation every 2 steps must not disturb the RNG.
    config = VAEConfig(
        max_steps=6,
        batch_size=64,
        learning_rate=1e-3,
        val_episodes=3,
        checkpoint_every=3,
        val_every=2,
        log_every=1,
        seed=5,
    )
    train_vae(small_store, tmp_path / "whole", config, progress=False)

    real_check = train_module.check_finite

    def kill_at_step_5(loss, step, checkpoints):
        if step == 5:
            raise Killed
        real_check(loss, step, checkpoints)

    monkeypatch.setattr(train_module, "check_finite", kill_at_step_5)
    with pytest.raises(Killed):
        train_vae(small_store, tmp_path / "killed", config, progress=False)
    monkeypatch.setattr(train_module, "check_finite", real_check)
    assert not (tmp_path / "killed" / "vae.pt").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        train_vae(small_store, tmp_path / "killed", config, progress=False)

    summary = train_vae(small_store, tmp_path / "killed", config, resume=True, progress=False)
    assert (summary.steps, summary.new_steps) == (6, 3)
    # the time of the killed run up to its checkpoint is counted too (the stage's time)
    assert summary.total_seconds > summary.seconds > 0
    whole = load_vae(tmp_path / "whole" / "vae.pt").state_dict()
    resumed = load_vae(tmp_path / "killed" / "vae.pt").state_dict()
    # CPU, same threads, same batches and noise: bit-identical, no tolerance needed
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name

    # a finished run resumed again has nothing to do; other settings are refused
    again = train_vae(small_store, tmp_path / "killed", config, resume=True, progress=False)
    assert again.new_steps == 0
    changed = VAEConfig(**{**vars(config), "learning_rate": 1e-4})
    with pytest.raises(ValueError, match="learning_rate"):
        train_vae(small_store, tmp_path / "killed", changed, resume=True, progress=False)


def test_time_budget_stops_saves_and_counts_resumed_runs(small_store, tmp_path, monkeypatch):
    real_check = train_module.check_finite

    def slow_step(loss, step, checkpoints):  # 50 ms a step: the budget, not max_steps, ends it
        time.sleep(0.05)
        real_check(loss, step, checkpoints)

    monkeypatch.setattr(train_module, "check_finite", slow_step)
    config = VAEConfig(max_steps=1000, batch_size=16, time_budget_s=2.0, checkpoint_every=500)
    first = train_vae(small_store, tmp_path / "run", config, progress=False)
    assert 1 <= first.steps < 200
    assert first.total_seconds >= 2.0
    # the model and a checkpoint at the step reached, so the stage counts as done
    assert (tmp_path / "run" / "vae.pt").exists()
    again = train_vae(small_store, tmp_path / "run", config, resume=True, progress=False)
    assert again.new_steps == 0  # the budget counts the earlier run's time
    more = dataclasses.replace(config, time_budget_s=again.total_seconds + 1.0)
    longer = train_vae(small_store, tmp_path / "run", more, resume=True, progress=False)
    assert longer.new_steps >= 1 and longer.steps == first.steps + longer.new_steps
    with pytest.raises(SystemExit) as refused:
        main(["train-vae", "--store", str(small_store), "--out", str(tmp_path / "x"),
              "--time-budget", "0"])  # fmt: skip
    assert refused.value.code == 2 and not (tmp_path / "x").exists()


def test_init_starts_from_the_given_weights_and_names_a_missing_file(small_store, tmp_path):
    """vae.init: training begins at the given V's weights (at a learning rate too small to move
    them, the result is those weights), not at the seed's random ones."""
    base = VAEConfig(max_steps=3, batch_size=16, checkpoint_every=500)
    given = train_vae(small_store, tmp_path / "given", base, progress=False).model_path
    still = dataclasses.replace(base, max_steps=1, learning_rate=1e-12, seed=1, init=str(given))
    train_vae(small_store, tmp_path / "warm", still, progress=False)
    train_vae(small_store, tmp_path / "cold", dataclasses.replace(still, init=None), progress=False)
    start, warm, cold = (load_vae(tmp_path / x).state_dict() for x in ("given", "warm", "cold"))
    for name, weights in start.items():
        torch.testing.assert_close(warm[name], weights, atol=1e-6, rtol=0)
    assert any(not torch.allclose(cold[k], w, atol=1e-3) for k, w in start.items())
    missing = dataclasses.replace(still, init=str(tmp_path / "nowhere" / "vae.pt"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_vae(small_store, tmp_path / "x", missing, progress=False)


def test_non_finite_loss_names_step_and_checkpoint(small_store, tmp_path):
    out = tmp_path / "run"
    config = VAEConfig(max_steps=5, batch_size=16, learning_rate=1e30, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"at step 2\b") as info:
        train_vae(small_store, out, config, progress=False)
    assert str(out / "latest.pt") in str(info.value)
    assert not (out / "vae.pt").exists()


def test_bf16_is_refused_where_it_is_not_native(small_store, tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "bf16_supported", lambda device: False)
    config = VAEConfig(max_steps=1, device="cpu", bf16=True)
    with pytest.raises(ValueError, match="needs native bfloat16.*this cpu has none"):
        train_vae(small_store, tmp_path / "run", config, progress=False)
    assert not (tmp_path / "run" / "vae.pt").exists()


needs_native_bf16 = pytest.mark.skipif(
    not bf16_supported(torch.device("cpu")), reason="this CPU has no AVX512-BF16 or AMX"
)


@needs_native_bf16
def test_bf16_channels_last_on_cpu_gives_float32s_loss_and_gradient(small_store):
    """The CPU speed options compute the same step as float32, up to bf16's rounding: the loss
    within 1%, the gradient pointing the same way (cosine > 0.99)."""
    frames = torch.from_numpy(EpisodeStore(small_store)[0].load()["obs"][:32])
    model = ConvVAE(32)
    results = {}
    for fast in (False, True):
        config = VAEConfig(bf16=fast, channels_last=fast)
        net = model.to(memory_format=torch.channels_last) if fast else model
        net.zero_grad()
        torch.manual_seed(0)  # the same reparameterization noise
        loss = train_module.compute_loss(net, train_module.to_input(frames, "cpu", fast), config)
        loss.total.backward()
        grad = torch.cat([p.grad.flatten() for p in net.parameters()])
        results[fast] = (loss.total.item(), grad.clone())
    (loss32, grad32), (loss16, grad16) = results[False], results[True]
    assert abs(loss16 - loss32) < 0.01 * loss32
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99
    assert not torch.equal(grad16, grad32)  # bf16 really ran


@needs_native_bf16
def test_bf16_channels_last_training_on_cpu_saves_an_ordinary_float32_v(small_store, tmp_path):
    config = VAEConfig(max_steps=3, batch_size=16, device="cpu", bf16=True, channels_last=True)
    summary = train_vae(small_store, tmp_path / "run", config, progress=False)
    assert summary.steps == 3 and np.isfinite(summary.train_loss)
    saved = torch.load(tmp_path / "run" / "vae.pt", weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float32 for t in saved.values())  # no bf16 in the file
    assert load_vae(tmp_path / "run" / "vae.pt").z_size == 32


# --- the model file --------------------------------------------------------------------------


def test_load_vae_errors_name_the_file(tmp_path):
    missing = tmp_path / "nothing" / "vae.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_vae(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="corrupt"):
        load_vae(corrupt)
    small = tmp_path / "z16.pt"
    save_vae(ConvVAE(16), VAEConfig(z_size=16), small)
    assert load_vae(small).z_size == 16
    with pytest.raises(ValueError, match="z_size 16, expected z_size 32"):
        load_vae(small, z_size=32)
    state = torch.load(small, weights_only=True)
    state["z_size"] = 32  # weights of z 16 labelled as z 32
    torch.save(state, small)
    with pytest.raises(ValueError, match=r"z16.pt: weights do not fit .*size mismatch"):
        load_vae(small)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a V model file"):
        load_vae(tmp_path / "other.pt")


# --- the command -----------------------------------------------------------------------------


def test_cli_trains_and_resumes(small_store, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-vae", "--store", str(small_store), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "3", "--batch-size", "16", "--z-size", "8"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("trained V for 3 steps") and str(out / "vae.pt") in line
    # --resume takes the run's own settings; --steps extends it
    assert main([*args, "--resume", "--steps", "5"]) == 0
    assert "trained V for 2 steps (now 5 steps" in capsys.readouterr().out
    assert load_vae(out / "vae.pt").z_size == 8


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--store", "{tmp}/none", "--out", "{tmp}/run"], "no such store folder"),
        (["--store", "{store}", "--out", "{tmp}/run", "--device", "nonsense"], "nonsense"),
        (["--store", "{store}", "--out", "{tmp}/run", "--init", "{tmp}/nowhere"], "nowhere"),
    ],
    ids=["missing-store", "bad-device", "missing-init"],
)
def test_cli_user_errors_exit_2_with_one_line(small_store, tmp_path, capsys, extra, message):
    argv = ["train-vae", *(a.format(tmp=tmp_path, store=small_store) for a in extra)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldmodels train-vae: error:") and message in err
    assert "\n" not in err
