"""Both CarRacing backends, stepped for real, and the one preprocessing function."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worldmodels.envs import envpool_available, make_vec_env, resolve_backend
from worldmodels.envs.preprocess import preprocess_frames

needs_envpool = pytest.mark.skipif(not envpool_available(), reason="envpool not installed")
BACKENDS = ["gymnasium", pytest.param("envpool", marks=needs_envpool)]
STRAIGHT = np.array([0.0, 0.3, 0.0], np.float32)


def drive(backend: str, steps: int = 40, num_envs: int = 2):
    """Drive straight ahead on ``num_envs`` fresh tracks; return raw frames and rewards."""
    with make_vec_env(backend=backend, num_envs=num_envs, max_steps=200, seed=1) as env:
        obs = env.reset(seeds=list(range(num_envs)))
        frames, rewards = [obs], []
        for _ in range(steps):
            result = env.step(np.tile(STRAIGHT, (num_envs, 1)))
            frames.append(result.obs)
            rewards.append(result.reward)
            assert not result.terminated.any()
    return np.stack(frames), np.stack(rewards)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_steps_real_environments(backend):
    frames, rewards = drive(backend)
    assert frames.shape == (41, 2, 96, 96, 3) and frames.dtype == np.uint8
    assert rewards.shape == (40, 2) and rewards.dtype == np.float32
    # -0.1 per frame, plus 1000/N for each new tile: driving forward visits tiles
    assert (rewards > 0).any() and np.isclose(rewards.min(), -0.1, atol=1e-3)
    assert frames[-1].std() > 10  # a real picture, not a blank frame


@needs_envpool
def test_backends_agree_on_shape_dtype_and_colours():
    gym_frames = preprocess_frames(drive("gymnasium")[0].reshape(-1, 96, 96, 3))
    pool_frames = preprocess_frames(drive("envpool")[0].reshape(-1, 96, 96, 3))
    assert gym_frames.shape == pool_frames.shape and gym_frames.dtype == pool_frames.dtype
    gym_mean = gym_frames.reshape(-1, 3).mean(0)
    pool_mean = pool_frames.reshape(-1, 3).mean(0)
    assert np.abs(gym_mean - pool_mean).max() < 12, (gym_mean, pool_mean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeds_make_episodes_reproducible(backend):
    a, ra = drive(backend, steps=10, num_envs=1)
    b, rb = drive(backend, steps=10, num_envs=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)


@needs_envpool
def test_envpool_honours_each_resets_seed_on_any_slot():
    """Same seed -> same track and frames, whichever slot and whatever ran there before;
    different seeds -> different tracks; no seed -> the slot's next track, not a replay."""
    with make_vec_env(backend="envpool", num_envs=3, max_steps=200, seed=50) as env:
        first = env.reset(seeds=[7, 7, 8])
        assert np.array_equal(first[0], first[1]) and not np.array_equal(first[0], first[2])
        for _ in range(20):  # slot 2 drives on; then it is reset onto seed 7 mid-episode
            driven = env.step(np.tile(STRAIGHT, (3, 1)))
        again = env.reset(mask=np.array([False, False, True]), seeds=[None, None, 7])
        np.testing.assert_array_equal(again[2], first[0])
        for _ in range(20):  # slot 2 replays what slot 0 did on seed 7, frame for frame
            replay = env.step(np.tile(STRAIGHT, (3, 1)), active=np.array([False, False, True]))
        np.testing.assert_array_equal(replay.obs[2], driven.obs[0])
        unseeded = env.reset(mask=np.array([True, False, False]))
        assert not np.array_equal(unseeded[0], first[0])


@needs_envpool
def test_envpool_slots_in_several_pools_step_together():
    """Seeded resets of different slots at different times put them in different pools;
    one step still answers every active slot, in slot order."""
    with make_vec_env(backend="envpool", num_envs=3, max_steps=200) as env:
        env.reset(seeds=[1, 2, 3])
        env.reset(mask=np.array([False, True, False]), seeds=[None, 1, None])
        result = env.step(np.tile(STRAIGHT, (3, 1)))
        np.testing.assert_array_equal(result.obs[0], result.obs[1])  # both on seed 1, step 1
        assert not np.array_equal(result.obs[0], result.obs[2])
        assert result.reward[0] == result.reward[1]


def test_inactive_slots_are_left_alone():
    with make_vec_env(backend="gymnasium", num_envs=2, max_steps=50, workers=2) as env:
        obs = env.reset(seeds=[3, 4])
        result = env.step(np.tile(STRAIGHT, (2, 1)), active=np.array([True, False]))
        np.testing.assert_array_equal(result.obs[1], obs[1])
        assert result.reward[1] == 0 and result.reward[0] != 0


def test_a_failing_worker_raises_instead_of_hanging():
    with make_vec_env(backend="gymnasium", num_envs=2, max_steps=50, workers=2) as env:
        env.reset(seeds=[0, 1])
        env._pool.procs[1].kill()
        env._pool.procs[1].join()
        with pytest.raises(RuntimeError, match="worker 1 died"):
            env.step(np.tile(STRAIGHT, (2, 1)))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("mujoco")
    with pytest.raises(ValueError, match="unknown env"):
        make_vec_env(env="pong", backend="gymnasium")
    with pytest.raises(ValueError, match="num_envs"):
        make_vec_env(backend="gymnasium", num_envs=0)


def test_preprocess_crops_the_hud_and_resizes():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[:84] = (10, 200, 30)
    frame[84:] = 255  # the HUD bar must not leak into the picture
    out = preprocess_frames(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out == np.array([10, 200, 30], np.uint8)).all()
    batch = preprocess_frames(np.stack([frame, frame[::-1]]))
    assert batch.shape == (2, 64, 64, 3)


def test_preprocess_matches_pil_bilinear():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    ours = preprocess_frames(frames).astype(int)
    pil = np.stack(
        [np.asarray(Image.fromarray(f[:84]).resize((64, 64), Image.BILINEAR)) for f in frames]
    ).astype(int)
    assert np.abs(ours - pil).max() <= 1


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(np.zeros((2, 96, 96, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        preprocess_frames(np.zeros((96, 96), np.uint8))


# ------------------------------------------------------------------ mirror (CarRacing)
def last_frame(seed: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw and preprocessed last frame of a real gymnasium episode played with ``actions``."""
    env = make_vec_env("carracing", "gymnasium", 1, max_steps=len(actions) + 1, workers=0)
    try:
        env.reset(seeds=[seed])
        for a in actions:
            raw = env.step(a[None]).obs[0]
    finally:
        env.close()
    return raw, preprocess_frames(raw[None])[0].astype(np.float32)


def test_the_car_sits_at_the_middle_of_the_frames_width():
    """Mirroring about the frame's middle column is a mirror about the car (and so a valid
    frame of the mirror-image track): the car's red pixels are centred on column 47.5 of 96."""
    raw, _ = last_frame(0, np.zeros((40, 3), np.float32))
    car = (raw[:84, :, 0] > 150) & (raw[:84, :, 1] < 60) & (raw[:84, :, 2] < 60)
    rows, cols = np.nonzero(car)
    assert len(cols) > 10 and cols.mean() == pytest.approx(47.5)
    assert np.array_equal(car, car[:, ::-1])


def test_mirrored_frames_with_negated_steering_are_the_mirrored_episode():
    """Steer left on a real track; steer right (mirror_actions) from the same start: the left
    run's last frame flipped by mirror_frames looks like the right run's, far more than it
    looks like it unflipped (a flip of the rows, or gas and brake changed, would not)."""
    from worldmodels.envs.carracing import mirror_actions, mirror_frames

    actions = np.zeros((25, 3), np.float32)
    actions[5:, 0] = -0.8  # steer left after 5 steps
    actions[:15, 1] = 0.5  # gas, then coast
    assert mirror_actions(actions[5])[0] == pytest.approx(0.8)  # full right, same gas
    assert np.array_equal(mirror_actions(actions)[:, 1:], actions[:, 1:])
    for seed in (0, 1):
        _, left = last_frame(seed, actions)
        _, right = last_frame(seed, mirror_actions(actions))
        mirrored, apart = np.abs(mirror_frames(left) - right).mean(), np.abs(left - right).mean()
        assert mirrored < 0.65 * apart, (seed, mirrored, apart)


def test_mirror_frames_flips_the_width_of_the_chosen_frames_only():
    from worldmodels.envs.carracing import mirror_frames

    frames = np.zeros((3, 64, 64, 3), np.uint8)
    frames[:, 10, 0] = 255  # a mark at row 10, leftmost column
    which = np.array([True, False, True])
    out = mirror_frames(frames, which)
    assert out[0, 10, 63].all() and not out[0, 10, 0].any()  # same row, rightmost column
    assert np.array_equal(out[1], frames[1]) and np.array_equal(out[2], out[0])
    assert frames[0, 10, 0].all()  # the input is left as it was
    assert np.array_equal(mirror_frames(mirror_frames(frames)), frames)
