"""The dream: M as a batched environment, and CMA-ES training of C inside it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from worldmodels.config import ControllerConfig, DreamConfig, MDNRNNConfig, VAEConfig
from worldmodels.controller.model import ControllerSpec
from worldmodels.data.store import StoreWriter
from worldmodels.dream.check import CHECK_JSON, replay_in_dream
from worldmodels.dream.env import DreamEnv, DreamError, load_initial_latents, run_dreams
from worldmodels.dream.train import DreamFitness, train_in_dream
from worldmodels.evolution.cmaes import STATE
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.memory.train import save_mdrnn
from worldmodels.vision.train import save_vae
from worldmodels.vision.vae import ConvVAE

Z, H = 8, 16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_series(path, episodes=5, z_size=Z, first_z0=1.0, actions=None, reward=1.0):
    """A series store of Doom-shaped episodes (actions (N, 1)); every first frame has z0 ~ 1.
    ``actions(n)``: an episode's actions (default: uniform in [-1, 1])."""
    writer = StoreWriter(
        path, "series", identity={"test": str(path)}, extra={"z_size": z_size, "action_size": 1}
    )
    rng = np.random.default_rng(0)
    for i in range(episodes):
        n = 20 + i
        mu = rng.standard_normal((n, z_size)).astype(np.float16)
        mu[0, 0] = first_z0
        terminated = np.zeros(n, bool)
        terminated[-1] = True
        arrays = {
            "mu": mu,
            "logvar": np.full((n, z_size), -10.0, np.float16),
            "actions": (rng.uniform(-1, 1, n) if actions is None else actions(n))
            .reshape(n, 1)
            .astype(np.float32),
            "rewards": np.full(n, reward, np.float32),
            "terminated": terminated,
            "truncated": np.zeros(n, bool),
        }
        writer.add(i, arrays, {"length": n})
    writer.write_manifest(episodes=episodes)
    return path


def survival_mdrnn(z_size=Z, hidden=H) -> MDNRNN:
    """An M whose done head kills a dream unless the action is positive, and whose z stays
    at (1, 0, ..., 0): a controller survives by turning z0 into a positive action.

    LSTM: every weight 0 but the cell candidate's from the action (x10), input and output
    gates open; so h0 ~ tanh(c), c ~ tanh(10 a). Done logit = 2 - 10 h0: p > 0.5 unless
    h0 > 0.2. Mixture: mu = 1 on dim 0, 0 elsewhere, sigma = e^-7.
    """
    m = MDNRNN(z_size=z_size, action_size=1, hidden_size=hidden, done_head=True)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        a_col = z_size  # input layout [z, action]
        m.lstm.weight_ih_l0[2 * hidden, a_col] = 10.0  # g gate of unit 0
        m.lstm.bias_ih_l0[0:hidden] = 10.0  # input gate open
        m.lstm.bias_ih_l0[3 * hidden :] = 10.0  # output gate open
        k = m.num_gaussians
        bias = m.head.bias[: m.n_mixture_outputs].view(z_size, 3 * k)
        bias[0, k : 2 * k] = 1.0  # mu of dim 0
        bias[:, 2 * k :] = -7.0  # log sigma
        m.head.weight[-1, 0] = -10.0
        m.head.bias[-1] = 2.0
    return m.eval()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return write_series(tmp_path_factory.mktemp("dream") / "series")


@pytest.fixture(scope="module")
def latents(series):
    return load_initial_latents(series)


def test_shapes_reset_and_observations(latents):
    torch.manual_seed(0)
    m = MDNRNN(z_size=Z, action_size=1, hidden_size=H, done_head=True).eval()
    env = DreamEnv(m, latents, num_envs=6, obs_mode="zch", seed=0)
    obs = env.reset()
    assert obs.shape == (6, Z + 2 * H) == (6, env.obs_size)
    assert torch.allclose(obs[:, 0], torch.ones(6), atol=1e-2)  # first frames: z0 = 1
    assert (obs[:, Z:] == 0).all()  # c and h start at zero
    out = env.step(torch.full((6, 1), 0.5))
    assert out.obs.shape == (6, Z + 2 * H) and out.reward.shape == (6,)
    assert out.terminated.dtype == torch.bool and (out.reward == 1).all()  # +1 per step
    assert (out.obs[:, Z:] != 0).any()  # M's state moved
    # c then h, as M holds them
    torch.testing.assert_close(out.obs[:, Z : Z + H], env.c[0])
    torch.testing.assert_close(out.obs[:, Z + H :], env.h[0])
    env.step(torch.zeros(6, 1), active=torch.tensor([True] * 3 + [False] * 3))
    assert env.t.tolist() == [2, 2, 2, 1, 1, 1]  # inactive rows were left alone
    obs = env.reset(mask=np.array([1, 0, 0, 0, 0, 1], bool))
    assert env.t.tolist() == [0, 2, 2, 1, 1, 0]
    assert (obs[[0, 5], Z:] == 0).all() and (obs[1:5, Z:] != 0).any()
    zh = DreamEnv(m, latents, num_envs=2, obs_mode="zh")
    assert zh.reset().shape == (2, Z + H)
    with pytest.raises(ValueError, match=r"expected actions of shape \(6, 1\)"):
        env.step(torch.zeros(6, 3))
    with pytest.raises(ValueError, match="unknown obs_mode"):
        DreamEnv(m, latents, 2, obs_mode="zcz")
    with pytest.raises(ValueError, match="z=8, M has z=4"):
        DreamEnv(MDNRNN(z_size=4, action_size=1), latents, 2)


def test_done_head_ends_dreams_and_the_step_limit_truncates(latents):
    m = survival_mdrnn()
    env = DreamEnv(m, latents, num_envs=4, max_steps=5, temperature=1.0)
    env.reset()
    actions = torch.tensor([[-1.0], [0.0], [1.0], [1.0]])
    out = env.step(actions)
    assert out.terminated.tolist() == [True, True, False, False]
    for _ in range(4):
        out = env.step(actions, active=torch.tensor([False, False, True, True]))
    assert out.truncated.tolist() == [False, False, True, True]
    assert not out.terminated.any()


def test_batched_dreams_match_each_alone(latents):
    """Per-row parameters: dreams side by side == each dream alone (M is deterministic here)."""
    m = survival_mdrnn()
    spec = ControllerSpec.doom(Z, H)
    rng = np.random.default_rng(0)
    params = torch.as_tensor(rng.standard_normal((6, spec.num_params)), dtype=torch.float32)
    episodes = torch.tensor([0, 1, 2, 3, 4, 0])
    together = run_dreams(DreamEnv(m, latents, 6, max_steps=30), params, spec, episodes)
    for i in range(6):
        alone = run_dreams(
            DreamEnv(m, latents, 1, max_steps=30), params[i : i + 1], spec, episodes[i : i + 1]
        )
        assert alone.lengths.item() == together.lengths[i].item()
        assert alone.returns.item() == together.returns[i].item()
    assert len(set(together.lengths.tolist())) > 1  # the candidates really differ
    assert together.steps == int(together.lengths.sum())
    torch.testing.assert_close(together.returns, together.lengths.float())  # +1 per step


def test_higher_temperature_spreads_the_dreams(latents):
    torch.manual_seed(1)
    m = MDNRNN(z_size=Z, action_size=1, hidden_size=H, done_head=True).eval()
    spreads = []
    for tau in (0.3, 1.0, 2.0):
        env = DreamEnv(m, latents, num_envs=4000, temperature=tau, seed=3)
        env.reset(episodes=torch.zeros(4000, dtype=torch.int64))
        out = env.step(torch.zeros(4000, 1))
        spreads.append(out.obs[:, :Z].std(dim=0).mean().item())
    assert spreads[0] < spreads[1] < spreads[2]
    assert spreads[2] / spreads[0] > 1.8  # sqrt(2 / 0.3) = 2.6 from the noise alone


def test_nan_latents_are_reported_with_the_step(latents):
    m = survival_mdrnn()
    env = DreamEnv(m, latents, num_envs=3)
    env.reset()
    for _ in range(3):
        env.step(torch.ones(3, 1))
    with torch.no_grad():
        k = m.num_gaussians
        m.head.bias.view(-1)[k] = float("nan")  # mu of latent dim 0, component 0
        m.head.bias[: m.n_mixture_outputs].view(Z, 3 * k)[0, 2 * k :] = 0.0
    with pytest.raises(DreamError, match=r"dream step 4: M produced non-finite latents"):
        for _ in range(50):  # component 0 is drawn sooner or later
            env.step(torch.ones(3, 1))


def test_initial_latents_come_from_the_series_store(series, latents, tmp_path):
    assert latents.mu.shape == (5, Z) and torch.allclose(latents.mu[:, 0], torch.ones(5))
    with pytest.raises(ValueError, match="action_size 1, the model 3"):
        load_initial_latents(series, action_size=3)
    bad = write_series(tmp_path / "bad", episodes=1, first_z0=np.nan)
    with pytest.raises(DreamError, match="mu or logvar is not finite"):
        load_initial_latents(bad)


@pytest.fixture(scope="module")
def models(tmp_path_factory, series):
    folder = tmp_path_factory.mktemp("models")
    save_mdrnn(folder / "mdrnn.pt", survival_mdrnn(), MDNRNNConfig(hidden_size=H, done_head=True))
    torch.manual_seed(0)
    save_vae(ConvVAE(Z), VAEConfig(z_size=Z), folder / "vae.pt")
    return folder


def tiny_es(**kw) -> ControllerConfig:
    args = dict(
        env="doom", mode="zch", popsize=8, rollouts=2, generations=4, eval_every=0, device="cpu"
    )
    return ControllerConfig(**{**args, **kw})


def test_cmaes_in_the_dream_improves_and_resumes(models, series, tmp_path):
    dream = DreamConfig(max_steps=50, temperature=1.0)
    out = tmp_path / "c"
    args = (models / "mdrnn.pt", series, models / "vae.pt", out)
    summary = train_in_dream(*args, tiny_es(generations=2), dream, progress=False)
    assert summary.generations == 2
    with pytest.raises(ValueError, match="pass resume"):
        train_in_dream(*args, tiny_es(generations=2), dream, progress=False)
    hotter = DreamConfig(max_steps=50, temperature=1.3)
    with pytest.raises(ValueError, match="another dream.*temperature: 1.0 there, 1.3 now"):
        train_in_dream(*args, tiny_es(generations=6), hotter, resume=True, progress=False)
    summary = train_in_dream(*args, tiny_es(generations=6), dream, resume=True, progress=False)
    assert summary.generations == 6
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["generation"]) for r in rows] == list(range(1, 7))
    means = [float(r["mean"]) for r in rows]
    assert means[-1] > means[0] + 5  # the population learns to survive
    assert float(rows[-1]["best"]) == 50  # someone survives the whole dream
    for name in ("best.npy", "latest.npy", "curve.png", STATE, "controller.json"):
        assert (out / name).exists(), name
    info = json.loads((out / "controller.json").read_text())
    assert info["env"] == "doom" and info["trained_in"] == "dream"
    assert info["spec"]["mode"] == "zch" and np.load(out / "best.npy").shape == (Z + 2 * H,)


def test_resumed_equals_uninterrupted(models, series, tmp_path):
    dream = DreamConfig(max_steps=30)
    base = (models / "mdrnn.pt", series, models / "vae.pt")
    train_in_dream(*base, tmp_path / "a", tiny_es(generations=3), dream, progress=False)
    train_in_dream(*base, tmp_path / "b", tiny_es(generations=1), dream, progress=False)
    train_in_dream(*base, tmp_path / "b", tiny_es(generations=3), dream, True, progress=False)
    a = np.load(tmp_path / "a" / "latest.npy")
    np.testing.assert_array_equal(a, np.load(tmp_path / "b" / "latest.npy"))


def test_fitness_batches_candidates_with_shared_starts(series):
    m = survival_mdrnn()
    spec = ControllerSpec.doom(Z, H)
    latents = load_initial_latents(series)
    population = np.zeros((3, spec.num_params))
    population[0, 0] = 5.0  # z0 -> strongly positive action: survives
    population[1, 0] = -5.0  # dies at once
    small = DreamFitness(m, latents, spec, DreamConfig(max_steps=40, max_batch=2), 4, seed=0)
    big = DreamFitness(m, latents, spec, DreamConfig(max_steps=40), 4, seed=0)
    returns, lengths, steps = small.dreams(population, 0)
    assert returns.shape == (3, 4) and (returns[0] == 40).all() and (returns[1] == 1).all()
    scores, steps_big = big(population, 0)
    np.testing.assert_array_equal(scores, returns.double().mean(1).numpy())
    assert steps == steps_big == int(lengths.sum())


def test_the_doom_m_has_the_papers_size_and_a_restart_flag(series):
    from worldmodels.config import preset
    from worldmodels.memory.data import WindowSampler, open_series
    from worldmodels.memory.mdrnn import paper_parameter_count
    from worldmodels.memory.train import build_mdrnn

    model = build_mdrnn(preset("doom").mdrnn, z_size=64, action_size=1)
    assert model.extra_inputs == 1 and model.done_head and not model.reward_head
    assert paper_parameter_count(model) == 1_678_785  # the paper's count for Doom's M
    sampler = WindowSampler(open_series(series), seq_len=10, batch_size=64, terminal=True)
    batch = sampler.batch(0)
    flags = batch.restarts
    assert flags.shape == (64, 10)
    expected = (batch.starts[:, None] + np.arange(10)) == 0
    np.testing.assert_array_equal(flags.numpy() == 1, expected)
    assert expected[:, 0].any() and not expected[:, 1:].any()


def test_gymnasium_vector_adapter_resets_on_the_next_step(latents):
    from gymnasium.vector import VectorEnv

    from worldmodels.dream.vector import DreamVectorEnv

    env = DreamVectorEnv(survival_mdrnn(), latents, num_envs=3, max_steps=4, temperature=1.0)
    assert isinstance(env, VectorEnv) and env.action_space.shape == (3, 1)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    actions = np.array([[-1.0], [1.0], [1.0]], np.float32)
    obs, reward, terminated, truncated, _ = env.step(actions)
    assert terminated.tolist() == [True, False, False] and reward.tolist() == [1, 1, 1]
    obs, reward, terminated, _, _ = env.step(actions)
    assert reward.tolist() == [0, 1, 1] and not terminated[0]  # row 0 was reset instead
    assert (obs[0, Z:] == 0).all() and (obs[1, Z:] != 0).any()
    for _ in range(2):
        obs, reward, terminated, truncated, _ = env.step(actions)
    assert truncated.tolist() == [False, True, True]  # 4 steps: the limit


def test_carracing_in_the_dream_with_reward_and_done_heads(small_store, tmp_path):
    """Real CarRacing episodes -> V -> series -> M (reward + done heads) -> C in the dream,
    scored on real CarRacing."""
    from worldmodels.memory.train import train_mdrnn
    from worldmodels.vision.encode import encode_store

    torch.manual_seed(0)
    save_vae(ConvVAE(32), VAEConfig(), tmp_path / "vae.pt")
    encode_store(small_store, tmp_path / "vae.pt", tmp_path / "series", progress=False)
    m_config = MDNRNNConfig(
        hidden_size=16,
        reward_head=True,
        done_head=True,
        seq_len=20,
        batch_size=4,
        steps=4,
        val_episodes=0,
        checkpoint_every=10,
        log_every=2,
        device="cpu",
    )
    train_mdrnn(tmp_path / "series", tmp_path / "m", m_config, progress=False)
    config = tiny_es(
        env="carracing",
        mode="zh",
        popsize=4,
        generations=1,
        eval_every=1,
        eval_episodes=1,
        num_envs=1,
        max_steps=15,
        backend="gymnasium",
        workers=0,
    )
    dream = DreamConfig(env="carracing", max_steps=15, select_on_real=True)
    args = (tmp_path / "m" / "mdrnn.pt", tmp_path / "series", tmp_path / "vae.pt")
    summary = train_in_dream(*args, tmp_path / "c", config, dream, progress=False)
    assert np.isfinite(summary.best_eval) and summary.best_eval < 15  # CarRacing: -0.1 a frame
    rows = list(csv.DictReader((tmp_path / "c" / "log.csv").open()))
    assert float(rows[0]["best"]) != 15.0  # the reward head, not +1 per step
    from worldmodels.agent import Agent

    agent = Agent.load(tmp_path / "c", device="cpu")
    assert agent.env == "carracing" and agent.spec.num_params == (32 + 16) * 3 + 3


@pytest.mark.parametrize("done_logit", [-20.0, 20.0])
def test_a_first_generation_that_outlives_the_dream_is_warned_about(
    models, series, tmp_path, capsys, done_logit
):
    """The 2018 code's dream killed near-random controllers within ~305 of 2,100 steps; one
    that lets generation 1 live most of its limit is the dream C exploits (doom-laptop on
    the paper's 1-10-frame data: 1,460 of 2,100)."""
    m = survival_mdrnn()
    with torch.no_grad():
        m.head.weight[-1].zero_()
        m.head.bias[-1] = done_logit  # -20: never done; +20: done at once
    save_mdrnn(tmp_path / "m.pt", m, MDNRNNConfig(hidden_size=H, done_head=True))
    dream = DreamConfig(max_steps=40, temperature=1.0)
    summary = train_in_dream(
        tmp_path / "m.pt",
        series,
        models / "vae.pt",
        tmp_path / "c",
        tiny_es(generations=1),
        dream,
        progress=False,
    )
    printed = capsys.readouterr().out
    if done_logit < 0:
        assert summary.first_generation_mean == 40
        assert "generation 1 lives 40 of 40 dream steps" in summary.first_generation_warning
        assert "WARNING: generation 1 lives" in printed and "WARNING" in summary.line()
    else:
        assert summary.first_generation_mean <= 1
        assert summary.first_generation_warning is None and "generation 1 lives" not in printed
        assert "generation 1's mean dream return" in summary.line()


def test_replaying_the_datas_actions_dreams_its_deaths(tmp_path):
    """survival_mdrnn dies on the step after a negative action: episodes of positive actions
    ending with a negative one die at their real length in the dream, too."""
    ends_negative = write_series(tmp_path / "agree", actions=lambda n: np.r_[np.ones(n - 1), -1.0])
    check = replay_in_dream(survival_mdrnn(), ends_negative, DreamConfig(max_steps=200))
    assert check.episodes == 5
    assert check.dream_length == check.real_length == np.mean([20, 21, 22, 23, 24])
    assert check.dream_deaths == check.real_deaths == 1.0
    assert check.dream_return == check.real_return and check.warning() is None
    paid_double = write_series(
        tmp_path / "pays", actions=lambda n: np.r_[np.ones(n - 1), -1.0], reward=2.0
    )
    check = replay_in_dream(survival_mdrnn(), paid_double, DreamConfig(max_steps=200))
    assert check.length_ratio == 1 and check.dream_return == check.real_return / 2
    assert "the dream pays them -22.0 against the game" in check.warning()
    assert "x longer in the dream" not in check.warning()


def test_a_dream_that_never_kills_is_reported_before_training(models, tmp_path):
    always_positive = write_series(tmp_path / "s", actions=np.ones)
    dream = DreamConfig(max_steps=100, temperature=1.0)
    out = tmp_path / "c"
    summary = train_in_dream(
        models / "mdrnn.pt",
        always_positive,
        models / "vae.pt",
        out,
        tiny_es(generations=1),
        dream,
        progress=False,
    )
    check = summary.check
    assert check.dream_length == 100 and check.dream_deaths == 0 and check.real_deaths == 1
    assert "longer in the dream" in check.warning() and "WARNING" in check.line()
    saved = json.loads((out / CHECK_JSON).read_text())
    assert saved["length_ratio"] == pytest.approx(100 / 22) and saved["warning"]
    always_negative = write_series(tmp_path / "dies", actions=lambda n: -np.ones(n))
    short = replay_in_dream(survival_mdrnn(), always_negative, dream)
    assert short.dream_length == 1 and "shorter" in short.warning()
