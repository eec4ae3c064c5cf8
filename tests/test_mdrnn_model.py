"""Tests for M, the MDN-RNN (src/worldmodels/memory/mdrnn.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from worldmodels.memory.mdrnn import (
    LOG_SIGMA_MAX,
    LOG_SIGMA_MIN,
    MDNRNN,
    MDNOutput,
    done_loss,
    mdn_nll,
    paper_parameter_count,
    parameter_count,
    reward_loss,
    sample_next_z,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_model(**kw) -> MDNRNN:
    args = dict(z_size=4, action_size=2, hidden_size=16, num_gaussians=3)
    args.update(kw)
    return MDNRNN(**args)


# ---------------------------------------------------------------- parameters
def test_parameter_counts_carracing():
    m = MDNRNN()
    assert parameter_count(m) == 423_392
    assert sum(p.numel() for p in m.parameters()) == 423_392
    assert paper_parameter_count(m) == 422_368
    assert m.head.out_features == 32 * 5 * 3


def test_parameter_counts_doom_match_paper():
    # Doom: z 64, action 1, restart flag, LSTM 512, 5 mixtures, done head.
    m = MDNRNN(z_size=64, action_size=1, hidden_size=512, done_head=True, extra_inputs=1)
    assert paper_parameter_count(m) == 1_678_785  # the paper's figure
    assert parameter_count(m) == 1_678_785 + 4 * 512


def test_forget_gate_bias():
    m = MDNRNN()
    h = m.hidden_size
    total = m.lstm.bias_ih_l0 + m.lstm.bias_hh_l0
    assert torch.all(total[h : 2 * h] == 1.0)  # gate order i, f, g, o
    assert torch.all(total[:h] == 0.0)
    assert torch.all(total[2 * h :] == 0.0)
    assert torch.all(m.lstm.bias_hh_l0 == 0.0)
    assert m.lstm.batch_first


# -------------------------------------------------------------------- shapes
def test_forward_shapes_and_heads():
    m = small_model(reward_head=True, done_head=True, extra_inputs=1)
    b, t = 3, 7
    z, a, flag = torch.randn(b, t, 4), torch.randn(b, t, 2), torch.zeros(b, t, 1)
    out, (h, c) = m(z, a, extra=flag)
    for x in (out.log_pi, out.mu, out.log_sigma):
        assert x.shape == (b, t, 4, 3)
    assert out.reward.shape == (b, t) and out.done_logit.shape == (b, t)
    assert h.shape == c.shape == (1, b, 16)
    assert torch.allclose(out.log_pi.exp().sum(-1), torch.ones(b, t, 4), atol=1e-6)
    assert out.log_sigma.min() >= LOG_SIGMA_MIN and out.log_sigma.max() <= LOG_SIGMA_MAX
    with pytest.raises(ValueError):
        m(z, a)  # extra input required


def test_no_optional_heads_by_default():
    out, _ = small_model()(torch.randn(2, 3, 4), torch.randn(2, 3, 2))
    assert out.reward is None and out.done_logit is None
    with pytest.raises(ValueError):
        done_loss(out, torch.zeros(2, 3))


def test_step_matches_forward():
    m = small_model(done_head=True, extra_inputs=1)
    b, t = 4, 6
    z, a = torch.randn(b, t, 4), torch.randn(b, t, 2)
    flag = (torch.rand(b, t) < 0.2).float()
    s0 = (torch.randn(1, b, 16), torch.randn(1, b, 16))
    out_seq, (h_seq, c_seq) = m(z, a, extra=flag.unsqueeze(-1), state=s0)
    state = s0
    for i in range(t):
        out, state, h = m.step(z[:, i], a[:, i], state, extra=flag[:, i : i + 1])
        assert out.mu.shape == (b, 4, 3) and out.done_logit.shape == (b,) and h.shape == (b, 16)
        ref = out_seq.select_time(i)
        for name in ("log_pi", "mu", "log_sigma", "done_logit"):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name))
    torch.testing.assert_close(state[0], h_seq)
    torch.testing.assert_close(state[1], c_seq)


def test_initial_state_and_batch_independence():
    m = small_model()
    h, c = m.initial_state(5)
    assert h.shape == c.shape == (1, 5, 16) and not h.any() and not c.any()
    # batch-first: changing sample 1 must not change sample 0's outputs
    z, a = torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    out1, _ = m(z, a)
    z2 = z.clone()
    z2[1] += 10.0
    out2, _ = m(z2, a)
    torch.testing.assert_close(out1.mu[0], out2.mu[0])
    assert not torch.allclose(out1.mu[1], out2.mu[1])


# ------------------------------------------------------------------- mdn_nll
def _random_output(shape, dtype=torch.float64) -> MDNOutput:
    logits = torch.randn(*shape, dtype=dtype)
    return MDNOutput(
        log_pi=F.log_softmax(logits, dim=-1),
        mu=torch.randn(*shape, dtype=dtype),
        log_sigma=torch.empty(*shape, dtype=dtype).uniform_(-1.0, 0.5),
    )


def test_mdn_nll_matches_scipy():
    b, t, zd, k = 2, 3, 4, 5
    out = _random_output((b, t, zd, k))
    target = torch.randn(b, t, zd, dtype=torch.float64)
    pi = out.log_pi.exp().numpy()
    pdf = norm.pdf(target.numpy()[..., None], loc=out.mu.numpy(), scale=out.log_sigma.exp().numpy())
    expected = -np.log((pi * pdf).sum(-1)).mean()
    assert mdn_nll(out, target).item() == pytest.approx(expected, rel=1e-9)

    # float32 agrees too
    out32 = MDNOutput(out.log_pi.float(), out.mu.float(), out.log_sigma.float())
    assert mdn_nll(out32, target.float()).item() == pytest.approx(expected, rel=1e-5)


def test_mdn_nll_mask():
    b, t, zd, k = 3, 5, 4, 2
    out = _random_output((b, t, zd, k))
    target = torch.randn(b, t, zd, dtype=torch.float64)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[0, :2] = True
    mask[2, 4] = True
    target_bad = target.clone()
    target_bad[~mask] = float("nan")  # masked-out positions must not leak
    got = mdn_nll(out, target_bad, mask=mask)
    idx = mask.nonzero()
    manual = torch.stack(
        [
            mdn_nll(
                MDNOutput(
                    out.log_pi[i : i + 1, j : j + 1],
                    out.mu[i : i + 1, j : j + 1],
                    out.log_sigma[i : i + 1, j : j + 1],
                ),
                target[i : i + 1, j : j + 1],
            )
            for i, j in idx.tolist()
        ]
    ).mean()
    torch.testing.assert_close(got, manual)
    # float mask gives the same; all-true mask equals no mask
    torch.testing.assert_close(mdn_nll(out, target_bad, mask=mask.double()), got)
    torch.testing.assert_close(
        mdn_nll(out, target, mask=torch.ones(b, t, dtype=torch.bool)), mdn_nll(out, target)
    )


def test_mdn_nll_extreme_inputs_stay_finite():
    m = small_model()
    shape = (2, 3, 4, 3)
    # tiny sigma at the clamp, targets very far: finite and large positive
    out = MDNOutput(
        log_pi=F.log_softmax(torch.randn(shape), -1),
        mu=torch.zeros(shape),
        log_sigma=torch.full(shape, LOG_SIGMA_MIN),
    )
    far = torch.full((2, 3, 4), 1e3)
    loss = mdn_nll(out, far)
    assert torch.isfinite(loss) and loss.item() > 1e6
    # target exactly on the mean with the smallest sigma: bounded below
    near = mdn_nll(out, torch.zeros(2, 3, 4))
    assert torch.isfinite(near)
    assert near.item() >= -(-LOG_SIGMA_MIN - 0.5 * math.log(2 * math.pi)) - 1e-4
    # through the model: huge pre-activations get clamped, loss and grads finite
    with torch.no_grad():
        m.head.weight.mul_(1e4)
    z, a = torch.randn(2, 3, 4) * 100, torch.randn(2, 3, 2) * 100
    out, _ = m(z, a)
    assert out.log_sigma.min() >= LOG_SIGMA_MIN and out.log_sigma.max() <= LOG_SIGMA_MAX
    loss = mdn_nll(out, torch.randn(2, 3, 4) * 1e3)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > -7.0
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


# ------------------------------------------------------- done / reward loss
def test_done_loss_pos_weight():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = MDNOutput(torch.zeros(2, 3, 1, 1), torch.zeros(2, 3, 1, 1), torch.zeros(2, 3, 1, 1))
    out.done_logit = logits
    got = done_loss(out, target, pos_weight=10.0)
    sig = torch.sigmoid(logits)
    hand = -(10.0 * target * torch.log(sig) + (1 - target) * torch.log(1 - sig)).mean()
    torch.testing.assert_close(got, hand)
    ref = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(10.0))
    torch.testing.assert_close(got, ref)
    mask = torch.tensor([[True, False, False], [False, True, False]])
    per = -(10.0 * target * torch.log(sig) + (1 - target) * torch.log(1 - sig))
    torch.testing.assert_close(done_loss(out, target, 10.0, mask=mask), per[mask].mean())
    # bool targets accepted
    torch.testing.assert_close(done_loss(out, target.bool()), got)


def test_reward_loss():
    m = small_model(reward_head=True)
    out, _ = m(torch.randn(2, 4, 4), torch.randn(2, 4, 2))
    target = torch.randn(2, 4)
    torch.testing.assert_close(reward_loss(out, target), F.mse_loss(out.reward, target))


# --------------------------------------------------------------- sampling
def _two_component_output(b=20_000) -> MDNOutput:
    # one latent dim, two components: weights 0.7 / 0.3, means 0 and 5, sigma 0.5
    log_pi = torch.log(torch.tensor([0.7, 0.3])).expand(b, 1, 2)
    mu = torch.tensor([0.0, 5.0]).expand(b, 1, 2)
    log_sigma = torch.full((b, 1, 2), math.log(0.5))
    return MDNOutput(log_pi, mu, log_sigma)


def test_temperature_controls_spread():
    out = _two_component_output()
    g = torch.Generator().manual_seed(1)
    cold = sample_next_z(out, 0.01, generator=g)
    assert cold.shape == (20_000, 1)
    assert abs(cold.mean().item()) < 0.01  # mean of the most likely component
    assert cold.std().item() < 0.06  # 0.5 * sqrt(0.01) = 0.05
    stds = [sample_next_z(out, tau, generator=g).std().item() for tau in (0.01, 1.0, 2.0)]
    assert stds[0] < stds[1] < stds[2]
    # tau = 1 is the plain mixture: variance = sum pi (sigma^2 + mu^2) - mean^2
    var = 0.7 * 0.25 + 0.3 * (0.25 + 25.0) - (0.3 * 5.0) ** 2
    assert stds[1] == pytest.approx(math.sqrt(var), rel=0.03)


def test_temperature_must_be_positive():
    out = _two_component_output(4)
    for tau in (0.0, -1.0):
        with pytest.raises(ValueError):
            sample_next_z(out, tau)
    with pytest.raises(ValueError):
        small_model().sample_sequence(torch.zeros(1, 4), torch.zeros(1, 2, 2), temperature=0.0)


def test_sampling_is_reproducible_with_generator():
    out = _random_output((8, 4, 3), dtype=torch.float32)
    a = sample_next_z(out, 1.0, generator=torch.Generator().manual_seed(3))
    b = sample_next_z(out, 1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_sample_sequence_feeds_back_samples():
    m = small_model(done_head=True, extra_inputs=1)
    b, t = 3, 5
    z0, actions = torch.randn(b, 4), torch.randn(b, t, 2)
    flag = torch.zeros(b, t, 1)
    flag[:, 0] = 1.0
    res = m.sample_sequence(
        z0, actions, temperature=1.0, extra=flag, generator=torch.Generator().manual_seed(0)
    )
    assert res.z.shape == (b, t, 4)
    assert res.done_prob.shape == (b, t) and res.reward is None
    assert ((res.done_prob >= 0) & (res.done_prob <= 1)).all()
    # replaying the fed-back inputs through forward gives the same final state
    z_in = torch.cat([z0.unsqueeze(1), res.z[:, :-1]], dim=1)
    _, (h, c) = m(z_in, actions, extra=flag)
    torch.testing.assert_close(res.state[0], h)
    torch.testing.assert_close(res.state[1], c)
    # tiny temperature: the rollout is (almost) deterministic
    r1 = m.sample_sequence(z0, actions, 1e-6, extra=flag)
    r2 = m.sample_sequence(z0, actions, 1e-6, extra=flag)
    torch.testing.assert_close(r1.z, r2.z, atol=1e-2, rtol=0)


# ------------------------------------------------------------ grad clipping
def test_gradient_clipping_bounds_total_norm():
    m = MDNRNN()
    z, a = torch.randn(2, 10, 32), torch.randn(2, 10, 3)
    out, _ = m(z, a)
    loss = 1e6 * mdn_nll(out, torch.randn(2, 10, 32) * 50)
    loss.backward()
    before = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    assert before.item() > 1.0  # the loss really was huge
    after = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in m.parameters()])
    )
    assert after.item() <= 1.0 + 1e-6
