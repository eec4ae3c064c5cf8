"""Training M on encoded series (src/worldmodels/memory/{data,train,pictures}.py, CLI)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from worldmodels.cli import main
from worldmodels.config import PRESETS, MDNRNNConfig, preset
from worldmodels.data.store import EpisodeStore, StoreError, StoreWriter
from worldmodels.memory import train as train_module
from worldmodels.memory.data import WindowSampler, open_series
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.memory.pictures import dream_vs_real
from worldmodels.memory.train import (
    build_mdrnn,
    learning_rate_at,
    load_mdrnn,
    save_mdrnn,
    train_mdrnn,
)
from worldmodels.utils.training import NonFiniteLossError
from worldmodels.vision.vae import ConvVAE, frames_to_input

Z = 32


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one thread is as fast, and far less hurt by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_series(path, episodes: list[dict], z_size=Z, action_size=3, identity=None):
    extra = {"z_size": z_size, "action_size": action_size}
    identity = {"test": str(path), **(identity or {})}
    writer = StoreWriter(path, "series", identity=identity, extra=extra)
    for i, arrays in enumerate(episodes):
        writer.add(i, arrays, {"length": len(arrays["mu"])})
    return path


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return ConvVAE(Z).eval()


@pytest.fixture(scope="module")
def series(small_store, vae, tmp_path_factory):
    """The six real CarRacing episodes encoded by a seeded, untrained ConvVAE.

    An untrained encoder's mu barely varies (std ~1e-3) and its sigma is ~1, which leaves M
    nothing to learn; so mu is standardized per dimension over the frames and sigma set to
    0.1: the latents then follow the real frames' dynamics, as a trained V's would.
    """
    store = EpisodeStore(small_store)
    with torch.no_grad():
        mus = [vae.encode(frames_to_input(np.array(ep["obs"])))[0].numpy() for ep in store]
    flat = np.concatenate(mus)
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-8
    episodes = []
    for ep, mu in zip(store, mus, strict=True):
        episodes.append(
            {
                "mu": ((mu - mean) / std).astype(np.float16),
                "logvar": np.full(mu.shape, 2 * np.log(0.1), np.float16),
                "actions": np.asarray(ep["actions"], np.float32),
                "rewards": np.asarray(ep["rewards"], np.float32),
                "terminated": np.asarray(ep["terminated"], bool),
                "truncated": np.asarray(ep["truncated"], bool),
            }
        )
    return write_series(tmp_path_factory.mktemp("series") / "series", episodes)


def marked_episode(e: int, n: int) -> dict:
    """mu[t] = (e, t, 0...), sigma ~ 0, actions[t] = (t, e, 0), rewards[t] = t, ends at n - 1."""
    mu = np.zeros((n, Z), np.float16)
    mu[:, 0], mu[:, 1] = e, np.arange(n)
    actions = np.zeros((n, 3), np.float32)
    actions[:, 0], actions[:, 1] = np.arange(n), e
    terminated = np.zeros(n, bool)
    terminated[-1] = True
    return {
        "mu": mu,
        "logvar": np.full((n, Z), -30.0, np.float16),
        "actions": actions,
        "rewards": np.arange(n, dtype=np.float32),
        "terminated": terminated,
        "truncated": np.zeros(n, bool),
    }


def tiny(**kw) -> MDNRNNConfig:
    args = dict(
        hidden_size=32,
        num_gaussians=3,
        seq_len=16,
        batch_size=8,
        steps=12,
        checkpoint_every=4,
        val_every=6,
        log_every=3,
        device="cpu",
    )
    args.update(kw)
    return MDNRNNConfig(**args)


# ---------------------------------------------------------------- windows
@pytest.mark.parametrize("terminal", [False, True])
def test_windows_stay_in_one_episode_and_targets_are_next_step(tmp_path, terminal):
    lengths = [12, 20, 9, 30]
    path = write_series(tmp_path / "s", [marked_episode(e, n) for e, n in enumerate(lengths)])
    seq_len = 8
    sampler = WindowSampler(open_series(path), seq_len, batch_size=16, seed=3, terminal=terminal)
    seen_ends = 0
    for step in range(20):
        b = sampler.batch(step)
        assert b.z.shape == (16, seq_len + 1, Z) and b.actions.shape == (16, seq_len, 3)
        for i, (e, s) in enumerate(zip(b.episodes, b.starts, strict=True)):
            n = lengths[e]
            assert s >= 0 and s + seq_len <= n - 1 + int(terminal)
            valid = b.z_mask[i] if b.z_mask is not None else torch.ones(seq_len, dtype=bool)
            z = b.z[i, :, :2]
            ep_of_step = z[: int(valid.sum()) + 1, 0]
            assert torch.allclose(ep_of_step, torch.full_like(ep_of_step, e), atol=1e-3)
            t = torch.arange(s, s + seq_len, dtype=torch.float32)
            assert torch.allclose(b.inputs[i, :, 1], t, atol=1e-3)  # z_t
            assert torch.allclose(b.targets[i, valid, 1], t[valid] + 1, atol=1e-3)  # z_{t+1}
            assert torch.equal(b.actions[i, :, 0], t) and torch.all(b.actions[i, :, 1] == e)
            assert torch.equal(b.rewards[i], t) and torch.equal(b.dones[i], t == n - 1)
            if not valid.all():  # the terminal window: only its last target is missing
                assert valid[:-1].all() and s + seq_len == n
                seen_ends += 1
    assert (seen_ends > 0) == terminal
    # deterministic given (seed, step): a resumed run sees the same batches
    assert torch.equal(sampler.batch(5).z, sampler.batch(5).z)
    assert not torch.equal(sampler.batch(5).z, sampler.batch(6).z)


def mirrored_marked_episode(e: int, n: int) -> dict:
    """marked_episode with its mirror image: mu_mirror = (e, t, 1, 0...), steering t - 5."""
    arrays = marked_episode(e, n)
    arrays["actions"][:, 0] -= 5  # steering of both signs
    arrays["mu_mirror"] = arrays["mu"].copy()
    arrays["mu_mirror"][:, 2] = 1
    arrays["logvar_mirror"] = arrays["logvar"].copy()
    return arrays


def test_mirrored_windows_read_the_mirror_latents_and_negate_the_steering(tmp_path):
    lengths = [30, 25, 40]
    episodes = [mirrored_marked_episode(e, n) for e, n in enumerate(lengths)]
    mirrored_store = {"env": "carracing", "mirror": True}
    path = write_series(tmp_path / "s", episodes, identity=mirrored_store)
    sampler = WindowSampler(
        open_series(path), 8, batch_size=64, val_episodes=1, seed=3, mirror=True
    )
    flips = []
    for step in range(3):
        b = sampler.batch(step)
        for i, s in enumerate(b.starts):
            t = torch.arange(s, s + 8, dtype=torch.float32)
            flip = bool(b.z[i, 0, 2] > 0.5)
            assert torch.all((b.z[i, :, 2] > 0.5) == flip)  # a window is mirrored whole
            steering = -(t - 5) if flip else t - 5
            assert torch.equal(b.actions[i, :, 0], steering)
            assert torch.all(b.actions[i, :, 1] == int(b.episodes[i]))  # gas kept
            assert torch.equal(b.rewards[i], t)
            flips.append(flip)
    assert 0.35 < np.mean(flips) < 0.65
    assert torch.equal(sampler.batch(1).actions, sampler.batch(1).actions)  # fixed by step
    for v in sampler.val_batches():  # validation: the episodes as played
        assert torch.all(v.z[:, :, 2].abs() < 1e-3)
    plain = WindowSampler(open_series(path), 8, batch_size=64, val_episodes=1, seed=3)
    assert torch.all(plain.batch(0).z[:, :, 2].abs() < 1e-3)
    # the windows drawn are those of the plain sampler: mirror changes only their orientation
    assert np.array_equal(plain.batch(2).starts, sampler.batch(2).starts)

    unmirrored = write_series(tmp_path / "u", episodes, identity={"env": "carracing"})
    with pytest.raises(StoreError, match=f"{tmp_path / 'u'}: .*no mirrored latents.*--mirror"):
        train_mdrnn(unmirrored, tmp_path / "run", tiny(mirror=True), progress=False)
    doom = write_series(
        tmp_path / "d", episodes, identity={"env": "doom", "action_encoding": 2, "mirror": True}
    )
    with pytest.raises(ValueError, match="mirror is for CarRacing.*'doom'"):
        WindowSampler(open_series(doom), 8, batch_size=4, mirror=True)
    # a run trained without mirror is not resumed with it
    train_mdrnn(path, tmp_path / "m", tiny(steps=2, seq_len=8, batch_size=4), progress=False)
    with pytest.raises(ValueError, match="mirror=False, now True"):
        train_mdrnn(
            path, tmp_path / "m", tiny(steps=4, seq_len=8, batch_size=4, mirror=True), resume=True
        )


def test_windows_resample_z_and_hold_out_the_last_episodes(series):
    info = open_series(series)
    sampler = WindowSampler(info, 16, batch_size=32, val_episodes=2, seed=0)
    b = sampler.batch(0)
    assert set(b.episodes) <= {0, 1, 2, 3}
    ep = info.store[int(b.episodes[0])]
    mu = torch.from_numpy(np.asarray(ep["mu"][b.starts[0] : b.starts[0] + 17], np.float32))
    assert not torch.allclose(b.z[0], mu)  # z drawn from (mu, sigma), not mu
    val = list(sampler.val_batches())
    assert {int(e) for v in val for e in v.episodes} == {4, 5}
    # the tiling covers every transition of the held-out episodes: starts 0, 16, 32, 48, 63
    starts = np.concatenate([v.starts for v in val])
    assert sorted(starts) == sorted([0, 16, 32, 48, 63] * 2)
    assert torch.equal(val[0].z, next(iter(sampler.val_batches())).z)  # fixed noise


def test_short_episodes_are_an_error_or_padded(tmp_path):
    path = write_series(tmp_path / "s", [marked_episode(0, 40), marked_episode(1, 6)])
    with pytest.raises(StoreError, match=r"shortest episode has 6 steps.*seq_len \+ 1 = 11"):
        WindowSampler(open_series(path), 10, batch_size=4)
    sampler = WindowSampler(open_series(path), 10, batch_size=64, pad_short=True)
    b = sampler.batch(0)
    short = np.flatnonzero(b.episodes == 1)
    assert len(short) and b.z_mask is not None
    assert b.z_mask[short].sum(dim=1).eq(5).all()  # 6 steps: 5 targets, the rest masked
    assert b.step_mask[short].sum(dim=1).eq(6).all()
    config = tiny(seq_len=10, steps=2, val_episodes=0, pad_short=True, done_head=True)
    summary = train_mdrnn(path, tmp_path / "run", config, progress=False)
    assert np.isfinite(summary.train_nll) and summary.val_nll is None


@pytest.mark.parametrize("name", [n for n, c in PRESETS.items() if c.collect.env == "carracing"])
def test_carracing_presets_train_m_on_episodes_that_end_early(tmp_path, name):
    """CarRacing-v3 ends an episode at a finished lap or a car off the playfield: the agent
    and random_weights policies give such episodes, and M must train on them."""
    config = preset(name)
    full = config.collect.max_steps
    path = write_series(tmp_path / "s", [marked_episode(0, full), marked_episode(1, full // 2)])
    sampler = WindowSampler(
        open_series(path), config.mdrnn.seq_len, batch_size=8, pad_short=config.mdrnn.pad_short
    )
    assert sampler.batch(0).z.shape[1] == config.mdrnn.seq_len + 1


def test_every_step_is_about_equally_likely_to_be_trained_on(tmp_path):
    """Padded short episodes (most of Doom's) get as many draws per step as long ones."""
    lengths = [6, 8, 40, 100]
    path = write_series(tmp_path / "s", [marked_episode(e, n) for e, n in enumerate(lengths)])
    sampler = WindowSampler(open_series(path), 10, 4000, terminal=True, pad_short=True)
    b = sampler.batch(0)
    steps = np.zeros(len(lengths))
    valid = np.ones(b.actions.shape[:2], bool) if b.step_mask is None else b.step_mask.numpy()
    np.add.at(steps, b.episodes, valid.sum(axis=1))
    share = steps / steps.sum()
    np.testing.assert_allclose(share, np.array(lengths) / sum(lengths), rtol=0.12)


# --------------------------------------------------------------- training
def test_tiny_training_run_learns_clips_and_saves(series, tmp_path, monkeypatch):
    pre, post = [], []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *a, **kw):
        params = list(params)
        norm = clip(params, max_norm, *a, **kw)
        pre.append(float(norm))
        post.append(float(torch.norm(torch.stack([p.grad.norm() for p in params]))))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    config = tiny(steps=40, grad_clip=0.1, val_every=20, checkpoint_every=20)
    summary = train_mdrnn(series, tmp_path / "run", config, progress=False)
    assert summary.val_nll < summary.val_nll_start - 0.1
    assert len(pre) == 40 and max(post) <= 0.1 * (1 + 1e-4)
    assert max(pre) > 0.1  # clipping did something
    run = tmp_path / "run"
    for name in ("mdrnn.pt", "latest.pt", "config.json"):
        assert (run / name).exists()
    assert any((run / "tb").iterdir())
    model = load_mdrnn(run / "mdrnn.pt", z_size=Z, action_size=3)
    assert model.hidden_size == 32 and model.num_gaussians == 3
    assert "trained M for 40 steps" in summary.line()
    with pytest.raises(ValueError, match="finished M run"):
        train_mdrnn(series, run, config, progress=False)


def test_init_starts_from_the_given_weights_and_refuses_another_architecture(series, tmp_path):
    """mdrnn.init: training begins at the given M's weights (at a learning rate too small to
    move them, the result is those weights); an M of other sizes is named, not half-loaded."""
    given = train_mdrnn(series, tmp_path / "given", tiny(steps=4), progress=False).model_path
    still = tiny(steps=1, seed=1, learning_rate=1e-12, min_learning_rate=0, init=str(given))
    warm = train_mdrnn(series, tmp_path / "warm", still, progress=False)
    assert warm.val_nll_start == pytest.approx(warm.val_nll, abs=1e-4)
    start = load_mdrnn(given).state_dict()
    for name, weights in load_mdrnn(warm.model_path).state_dict().items():
        torch.testing.assert_close(weights, start[name], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=f"{given}: an M of another architecture"):
        train_mdrnn(series, tmp_path / "x", tiny(hidden_size=16, init=str(given)), progress=False)


def test_reward_and_done_heads_train(series, tmp_path):
    config = tiny(steps=3, reward_head=True, done_head=True)
    summary = train_mdrnn(series, tmp_path / "run", config, progress=False)
    model = load_mdrnn(summary.model_path)
    assert model.reward_head and model.done_head
    assert np.isfinite(summary.val_nll)


def test_learning_rate_decays_to_the_floor():
    config = MDNRNNConfig(learning_rate=1e-3, lr_decay=0.5, min_learning_rate=1e-4)
    assert learning_rate_at(config, 0) == 1e-3
    assert learning_rate_at(config, 1) == 5e-4
    assert learning_rate_at(config, 100) == 1e-4
    assert learning_rate_at(MDNRNNConfig(), 10_000) == 1e-3


def test_killed_and_resumed_equals_uninterrupted(series, tmp_path, monkeypatch):
    config = tiny(steps=12, checkpoint_every=4, val_every=5)
    train_mdrnn(series, tmp_path / "a", config, progress=False)

    real_step = train_module.train_step

    def killed_at_step_10(model, optimizer, batch, config, step, checkpoints):
        if step == 10:
            raise RuntimeError("killed")
        return real_step(model, optimizer, batch, config, step, checkpoints)

    monkeypatch.setattr(train_module, "train_step", killed_at_step_10)
    with pytest.raises(RuntimeError, match="killed"):
        train_mdrnn(series, tmp_path / "b", config, progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    with pytest.raises(ValueError, match="unfinished M run"):
        train_mdrnn(series, tmp_path / "b", config, progress=False)
    summary = train_mdrnn(series, tmp_path / "b", config, resume=True, progress=False)
    assert summary.steps_new == 4  # from the checkpoint at step 8
    # the killed run's time up to its checkpoint is counted too (the stage's time)
    assert summary.total_seconds > summary.seconds > 0
    a = torch.load(tmp_path / "a" / "mdrnn.pt")["state_dict"]
    b = torch.load(tmp_path / "b" / "mdrnn.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumed with more steps continues it
    more = train_mdrnn(series, tmp_path / "b", tiny(steps=14), resume=True, progress=False)
    assert more.steps == 14 and more.steps_new == 2


def test_time_budget_stops_saves_and_counts_resumed_runs(series, tmp_path, monkeypatch):
    real_step = train_module.train_step

    def slow_step(*args):  # 50 ms a step: the budget, not the step count, ends the run
        time.sleep(0.05)
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", slow_step)
    first = train_mdrnn(series, tmp_path / "run", tiny(steps=1000, time_budget_s=2.0),
                        progress=False)  # fmt: skip
    assert 1 <= first.steps < 200 and first.steps_new == first.steps
    saved = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)
    assert saved["step"] == first.steps  # checkpointed where it stopped: the stage is done
    assert (tmp_path / "run" / "mdrnn.pt").exists() and first.total_seconds >= 2.0
    again = train_mdrnn(series, tmp_path / "run", tiny(steps=1000, time_budget_s=2.0),
                        resume=True, progress=False)  # fmt: skip
    assert again.steps_new == 0 and again.steps == first.steps
    longer = tiny(steps=1000, time_budget_s=again.total_seconds + 1.0)
    more = train_mdrnn(series, tmp_path / "run", longer, resume=True, progress=False)
    assert more.steps_new >= 1 and more.steps == first.steps + more.steps_new


def test_nan_guard_names_the_step(tmp_path):
    eps = [marked_episode(e, 30) for e in range(3)]
    eps[0]["mu"][:] = np.nan
    eps[1]["mu"][:] = np.nan
    path = write_series(tmp_path / "s", eps)
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        train_mdrnn(path, tmp_path / "run", tiny(seq_len=8), progress=False)


# ----------------------------------------------------------------- errors
def test_series_errors_name_the_problem(series, small_store, tmp_path):
    with pytest.raises(ValueError, match="z_size 32, the model 16"):
        train_mdrnn(series, tmp_path / "r1", tiny(z_size=16), progress=False)
    with pytest.raises(ValueError, match="action_size 3, the model 2"):
        train_mdrnn(series, tmp_path / "r2", tiny(action_size=2), progress=False)
    with pytest.raises(StoreError, match=r"shortest episode has 80 steps"):
        train_mdrnn(series, tmp_path / "r3", tiny(seq_len=100), progress=False)
    with pytest.raises(StoreError, match="not an encoded series store"):
        train_mdrnn(small_store, tmp_path / "r4", tiny(), progress=False)
    with pytest.raises(ValueError, match="too few to hold out 6"):
        train_mdrnn(series, tmp_path / "r5", tiny(val_episodes=6), progress=False)
    with pytest.raises(ValueError, match="is an episode store"):
        train_mdrnn(series, series, tiny(), progress=False)


def test_load_mdrnn_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_mdrnn(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ValueError, match="corrupt.pt is corrupt"):
        load_mdrnn(corrupt)
    other = tmp_path / "other.pt"
    save_mdrnn(other, MDNRNN(Z, 3, hidden_size=16), tiny(hidden_size=16))
    state = torch.load(other)
    state["config"]["hidden_size"] = 24  # weights of another shape than the config says
    torch.save(state, other)
    with pytest.raises(ValueError, match=r"other.pt: weights do not fit.*hidden 24.*size mismatch"):
        load_mdrnn(other)
    with pytest.raises(ValueError, match="trained with z_size 32, expected 64"):
        load_mdrnn(_good(tmp_path), z_size=64)
    foreign = tmp_path / "vae.pt"
    torch.save({"state_dict": ConvVAE(8).state_dict()}, foreign)
    with pytest.raises(ValueError, match="vae.pt: not an MDN-RNN model file"):
        load_mdrnn(foreign)


def _good(tmp_path):
    return save_mdrnn(tmp_path / "good.pt", build_mdrnn(tiny(), Z, 3), tiny())


# --------------------------------------------------------------- pictures
def test_dream_vs_real_writes_strip_and_gif(series, small_store, vae, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    model = build_mdrnn(tiny(), Z, 3)
    ep = open_series(series).store[5]
    obs = EpisodeStore(small_store)[5]["obs"]
    made = dream_vs_real(model, vae, ep, obs, tmp_path / "pics", temperature=1.15, steps=10)
    png = Image.open(made.png)
    assert png.size[1] == 4 * 66  # four rows: real, V(real), M 1-step, M dream
    gif = Image.open(made.gif)
    assert gif.n_frames == 10
    assert 0 <= made.reconstruction_mse < 1 and 0 <= made.dream_mse < 1


def test_encoded_store_trains_and_pictures_dreams(small_store, vae, tmp_path):
    """The whole path: episodes -> encode_store (V) -> train_mdrnn -> dream pictures."""
    from worldmodels.config import VAEConfig
    from worldmodels.vision.encode import encode_store
    from worldmodels.vision.train import save_vae

    vae_path = save_vae(vae, VAEConfig(z_size=Z), tmp_path / "vae.pt")
    encode_store(small_store, vae_path, tmp_path / "series", device="cpu", progress=False)
    summary = train_mdrnn(
        tmp_path / "series", tmp_path / "run", tiny(steps=2), progress=False, vae_path=vae_path
    )
    assert [p.name for p in summary.pictures] == ["dream_vs_real.png", "dream_vs_real.gif"]
    assert all(p.stat().st_size > 0 for p in summary.pictures)
    with pytest.raises(StoreError, match="has no episode 5"):
        train_mdrnn(
            tmp_path / "series",
            tmp_path / "run2",
            tiny(steps=2),
            vae_path=vae_path,
            episodes_path=tmp_path / "series",
        )


# -------------------------------------------------------------------- CLI
def test_cli_end_to_end_and_bad_input(series, small_store, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-mdrnn", "--series", str(series), "--out", str(out), "--steps", "4"]
    args += ["--seq-len", "10", "--batch-size", "4", "--hidden", "16", "--gaussians", "2"]
    args += ["--checkpoint-every", "2", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("trained M for 4 steps") and "val NLL" in line
    assert load_mdrnn(out / "mdrnn.pt").hidden_size == 16
    assert main([*args, "--resume", "--steps", "6"]) == 0

    bad = ["train-mdrnn", "--series", str(small_store), "--out", str(tmp_path / "x")]
    assert main([*bad, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldmodels train-mdrnn: error:") and "series" in err
    assert len(err.splitlines()) == 1
    missing = ["train-mdrnn", "--series", str(tmp_path / "none"), "--out", str(tmp_path / "y")]
    assert main(missing) == 2
    assert main([*args[:5], "--out", str(tmp_path / "z"), "--vae", "v.pt"]) == 2
