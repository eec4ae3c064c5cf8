from __future__ import annotations

import numpy as np
import pytest

from worldmodels.data.policies import ENV_POLICIES, POLICIES, make_policy
from worldmodels.envs.carracing import ACTION_HIGH, ACTION_LOW


def run_policy(name: str, seed: int, steps: int = 50, slots: int = 3):
    policy = make_policy(name, slots)
    rng = np.random.default_rng(123)
    for s in range(slots):
        policy.start(s, np.random.default_rng([seed, s]))
    frames = rng.integers(0, 256, (steps, slots, 64, 64, 3), dtype=np.uint8)
    active = np.ones(slots, bool)
    return np.stack([policy.act(frames[t], active) for t in range(steps)])


@pytest.mark.parametrize("name", ENV_POLICIES["carracing"])
def test_actions_stay_in_the_action_box_and_are_reproducible(name):
    a = run_policy(name, seed=1)
    assert a.shape == (50, 3, 3) and a.dtype == np.float32
    assert (a >= ACTION_LOW).all() and (a <= ACTION_HIGH).all()
    np.testing.assert_array_equal(a, run_policy(name, seed=1))
    assert not np.array_equal(a, run_policy(name, seed=2))


@pytest.mark.parametrize("name", list(POLICIES))
def test_inactive_slots_get_zero_actions(name):
    policy = make_policy(name, 2)
    policy.start(0, np.random.default_rng(0))
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    out = policy.act(frames, np.array([True, False]))
    assert (out[1] == 0).all()


def test_brownian_is_a_smooth_walk():
    a = run_policy("brownian", seed=0, steps=200)
    steps = np.abs(np.diff(a, axis=0))
    assert steps.max() < 0.8  # continuous: no jumps across the box
    assert a[:, :, 0].std() > 0.05  # but it does wander


def test_random_weights_is_the_papers_near_constant_driver():
    a = run_policy("random_weights", seed=0, steps=30)
    # weights ~ N(0, s^2), s <= 0.01: steering near 0, gas near 0.5, as in the 2018 data
    assert np.abs(a[..., 0]).max() < 0.5
    assert np.abs(a[..., 1] - 0.5).max() < 0.25


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy 'zigzag'"):
        make_policy("zigzag", 1)
