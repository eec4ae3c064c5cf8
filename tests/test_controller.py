"""C: the controller, the batched rollout engine and CMA-ES."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from worldmodels.config import ControllerConfig, EvalConfig
from worldmodels.controller.model import MODES, ControllerSpec, check_params, controller_actions
from worldmodels.controller.policy import WorldModelPolicy
from worldmodels.controller.rollout import RolloutEngine, make_env_groups
from worldmodels.controller.train import (
    BEST,
    REPLAY_WINDOW,
    SELECTION_JSON,
    TRACKS_JSON,
    TRAIN_SEED_BASE,
    TrackLedger,
    choose_candidate,
    final_selection,
    final_selection_seeds,
    generation_jobs,
    generation_seeds,
    hard_tracks,
)
from worldmodels.envs import envpool_available, make_vec_env, resolve_backend
from worldmodels.evolution.cmaes import STATE, ESSettings, new_state, run_es
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.utils.device import bf16_supported
from worldmodels.vision.vae import ConvVAE


def test_parameter_counts():
    assert ControllerSpec().num_params == 867  # the paper's (32 + 256) * 3 + 3
    assert ControllerSpec(mode="z").num_params == 32 * 3 + 3
    assert ControllerSpec(mode="z_hidden", hidden_units=40).num_params == 32 * 40 + 40 + 40 * 3 + 3
    with pytest.raises(ValueError, match="unknown controller mode"):
        ControllerSpec(mode="zz")


@pytest.mark.parametrize("mode", MODES)
def test_actions_are_in_carracings_ranges(mode):
    spec = ControllerSpec(mode=mode)
    params = torch.randn(256, spec.num_params) * 3
    actions = controller_actions(params, torch.randn(256, spec.input_size) * 3, spec)
    steer, gas, brake = actions.T
    assert steer.min() >= -1 and steer.max() <= 1 and steer.min() < -0.5 < 0.5 < steer.max()
    assert gas.min() >= 0 and gas.max() <= 1
    assert brake.min() >= 0 and brake.max() <= 1 and (brake == 0).any()


def test_each_row_uses_its_own_parameters():
    spec = ControllerSpec()
    params, x = torch.randn(5, spec.num_params), torch.randn(5, spec.input_size)
    batched = controller_actions(params, x, spec)
    for i in range(5):
        alone = controller_actions(params[i : i + 1], x[i : i + 1], spec)
        torch.testing.assert_close(batched[i : i + 1], alone)
    # the layout is weight (in, out) row-major, then bias, as documented
    w = params[0, : spec.input_size * 3].reshape(spec.input_size, 3)
    raw = x[0] @ w + params[0, spec.input_size * 3 :]
    t = torch.tanh(raw)
    expected = torch.stack([t[0], (t[1] + 1) / 2, t[2].clamp(0, 1)])
    torch.testing.assert_close(batched[0], expected)


def test_check_params_names_the_source():
    spec = ControllerSpec()
    with pytest.raises(ValueError, match="best.npy: expected a vector of 867"):
        check_params(np.zeros(99), spec, source="best.npy")
    with pytest.raises(ValueError, match="NaN"):
        check_params(np.full(867, np.nan), spec)


needs_envpool = pytest.mark.skipif(not envpool_available(), reason="envpool not installed")


def make_policy(spec=None):
    torch.manual_seed(0)
    return WorldModelPolicy(ConvVAE(), MDNRNN(), spec or ControllerSpec())


def test_candidates_side_by_side_match_each_alone():
    """Per-env parameters: 3 candidates x 2 seeds in 3 slots == each job alone in 1 slot."""
    policy = make_policy()
    rng = np.random.default_rng(1)
    params = rng.standard_normal((3, policy.spec.num_params)) * 0.5
    jobs = [(c, s) for c in range(3) for s in (11, 12)]
    with make_vec_env(backend="gymnasium", num_envs=3, max_steps=25, workers=2) as env:
        together = RolloutEngine(policy, env).run(params, jobs)
    with make_vec_env(backend="gymnasium", num_envs=1, max_steps=25, workers=0) as env:
        engine = RolloutEngine(policy, env)
        alone = [engine.run(params[c : c + 1], [(0, s)]).returns[0] for c, s in jobs]
    np.testing.assert_allclose(together.returns, alone, atol=1e-3)
    assert together.env_steps == 6 * 25 and (together.lengths == 25).all()
    assert len(set(np.round(together.returns, 3))) > 1  # the candidates really differ


@needs_envpool
def test_all_candidates_of_a_generation_play_the_same_tracks_on_envpool():
    """Common random numbers where training runs: equal candidates score equally on each of
    the generation's seeds (slots reused mid-run included), and the seeds are different tracks."""
    policy = make_policy()
    params = np.tile(np.random.default_rng(2).standard_normal(policy.spec.num_params), (4, 1))
    seeds = generation_seeds(0, 5, 2)
    jobs = [(c, s) for c in range(4) for s in seeds]
    with make_vec_env(backend="envpool", num_envs=3, max_steps=30) as env:
        returns = RolloutEngine(policy, env).run(params * 0.5, jobs).returns.reshape(4, 2)
    np.testing.assert_allclose(returns, np.tile(returns[0], (4, 1)), atol=1e-3)
    assert abs(returns[0, 0] - returns[0, 1]) > 1e-3


def test_common_seeds_are_shared_by_candidates_and_can_be_turned_off():
    common = generation_jobs(ControllerConfig(rollouts=2), 3, popsize=4)
    assert [c for c, _ in common] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({s for _, s in common}) == 2 and {s for c, s in common if c == 3} == {
        s for c, s in common if c == 0
    }
    own = generation_jobs(ControllerConfig(rollouts=2, common_seeds=False), 3, popsize=4)
    assert [c for c, _ in own] == [0, 0, 1, 1, 2, 2, 3, 3] and len({s for _, s in own}) == 8


def test_mirror_tracks_mirror_every_other_track_the_same_for_every_candidate():
    config = ControllerConfig(rollouts=2, mirror_tracks=True)
    for generation in (3, 4):
        jobs = generation_jobs(config, generation, popsize=4)
        plain = generation_jobs(ControllerConfig(rollouts=2), generation, popsize=4)
        assert [(c, s) for c, s, _ in jobs] == plain  # the same tracks, one of two mirrored
        for c in range(4):
            assert [m for cand, _, m in jobs if cand == c] == [
                generation % 2 == 1,
                generation % 2 == 0,
            ]
    one = ControllerConfig(rollouts=1, mirror_tracks=True)
    assert [generation_jobs(one, g, 2)[0][2] for g in range(4)] == [False, True, False, True]
    with pytest.raises(ValueError, match="mirror_tracks is for CarRacing"):
        ControllerConfig(env="doom", mode="zch", mirror_tracks=True).validate()


def test_hard_track_replay_picks_the_worst_recent_fresh_tracks_each_once():
    def entry(generation, seed, mean, replay=False):
        return {"generation": generation, "seed": seed, "mean": mean, "replay": replay}

    ledger = [
        entry(0, 100, 900.0),
        entry(0, 101, 150.0),  # the worst, but replayed at generation 1
        entry(1, 102, 400.0),
        entry(1, 101, 300.0, replay=True),
        entry(2, 103, 500.0),
        entry(2, 102, 820.0, replay=True),  # 102 replayed: gone although its fresh mean is low
        entry(3, 104, 50.0),  # a later generation: unknown to generation 3
    ]
    assert hard_tracks(ledger, 3, 1) == [103]
    assert hard_tracks(ledger, 3, 2) == [103, 100]
    assert hard_tracks(ledger, 4, 1) == [104]
    assert hard_tracks(ledger, 0, 1) == []  # nothing played yet: every track fresh
    old = [entry(0, 7, 10.0), entry(REPLAY_WINDOW, 8, 700.0)]
    assert hard_tracks(old, REPLAY_WINDOW + 1, 1) == [8]  # generation 0 is out of the window

    config = ControllerConfig(rollouts=3, replay_hard=1)
    jobs = generation_jobs(config, 5, popsize=2, replay=[103])
    fresh = generation_seeds(config.seed, 5, 3)
    assert jobs == [(c, s) for c in range(2) for s in [*fresh[:2], 103]]
    plain = generation_jobs(ControllerConfig(rollouts=3), 5, popsize=2)
    assert generation_jobs(config, 5, 2, replay=[]) == plain
    for bad, match in (
        (dict(rollouts=2, replay_hard=2), "needs a fresh track"),
        (dict(rollouts=2, replay_hard=-1), "replay_hard must be in"),
        (dict(rollouts=2, replay_hard=1, common_seeds=False), "needs common_seeds"),
        (dict(rollouts=2, replay_hard=1, mirror_tracks=True), "choose one"),
    ):
        with pytest.raises(ValueError, match=match):
            ControllerConfig(**bad).validate()


def test_a_corrupt_replay_record_is_named_on_resume(tmp_path):
    path = tmp_path / TRACKS_JSON
    for text, match in (("[{", "is not valid JSON"), ('[{"seed": 3}]', "is corrupt: expected")):
        path.write_text(text)
        with pytest.raises(ValueError, match=match) as error:
            TrackLedger(tmp_path, resume=True)
        assert str(path) in str(error.value)
    assert TrackLedger(tmp_path, resume=False).entries == []  # a new run starts its own


def train_with_replay(smoke_run, out, generations, *extra):
    from worldmodels.cli import main

    args = ["train-controller", "--vae", str(smoke_run / "vae" / "vae.pt")]
    args += ["--mdrnn", str(smoke_run / "mdrnn" / "mdrnn.pt"), "--out", str(out)]
    args += ["--popsize", "4", "--rollouts", "2", "--replay-hard", "1", "--sigma0", "0.5"]
    args += ["--generations", str(generations), "--max-steps", "40", "--num-envs", "4"]
    backend = resolve_backend("auto", quiet=True)
    args += ["--eval-every", "0", "--backend", backend, "--no-progress", *extra]
    assert main(args) == 0
    return json.loads((out / TRACKS_JSON).read_text())


def test_hard_track_replay_replays_the_track_the_population_did_worst_on(smoke_run, tmp_path):
    """Real CarRacing tracks: each generation after the first plays one fresh track and the
    recent fresh track with the lowest population mean; a run stopped and resumed replays the
    same tracks as one that ran through."""
    ledger = train_with_replay(smoke_run, tmp_path / "through", 4)
    by_generation = [[e for e in ledger if e["generation"] == g] for g in range(4)]
    assert [len(entries) for entries in by_generation] == [2, 2, 2, 2]
    assert not any(e["replay"] for e in by_generation[0])
    for g in (1, 2, 3):
        fresh, replay = by_generation[g]
        assert not fresh["replay"] and replay["replay"]
        replayed_before = {e["seed"] for e in ledger if e["replay"] and e["generation"] < g}
        pool = [
            e
            for e in ledger
            if e["generation"] < g and not e["replay"] and e["seed"] not in replayed_before
        ]
        assert replay["seed"] == min(pool, key=lambda e: e["mean"])["seed"]
    means = [e["mean"] for e in ledger if not e["replay"]]
    assert len(set(np.round(means, 3))) > 1  # the tracks differ, so "worst" means something
    train_with_replay(smoke_run, tmp_path / "resumed", 2)
    resumed = train_with_replay(smoke_run, tmp_path / "resumed", 4, "--resume")
    assert [(e["generation"], e["seed"], e["replay"]) for e in resumed] == [
        (e["generation"], e["seed"], e["replay"]) for e in ledger
    ]
    np.testing.assert_allclose([e["mean"] for e in resumed], [e["mean"] for e in ledger], atol=1e-3)


def test_a_mirrored_job_plays_the_mirror_image_episode(monkeypatch):
    """C sees the track's frames flipped left-right and its steering reaches the game negated:
    a C that holds the wheel right on the mirrored track drives the real track exactly as one
    that holds it left there (the same frames), not as one that holds it right."""
    from worldmodels.envs.carracing import mirror_frames

    policy = make_policy(ControllerSpec(mode="z"))
    right = np.zeros(policy.spec.num_params)
    right[-3:] = [0.6, 0.0, -20.0]  # steering tanh(0.6) = +0.54 (right), gas 0.5, no brake
    left = right.copy()
    left[-3] = -0.6
    seen = []
    act = policy.act
    monkeypatch.setattr(
        policy, "act", lambda obs, *a, **k: (seen.append(obs), act(obs, *a, **k))[1]
    )

    def last_frame_seen(params, job):
        seen.clear()
        with make_vec_env(backend="gymnasium", num_envs=1, max_steps=40, workers=0) as env:
            first = env.reset(seeds=[5])[0]
            result = RolloutEngine(policy, env).run(params[None], [job])
        assert result.lengths[0] == 40
        return first, seen[0][0], seen[-1][0]

    first, first_seen, mirrored = last_frame_seen(right, (0, 5, True))
    assert np.array_equal(first_seen, mirror_frames(first))
    _, _, held_left = last_frame_seen(left, (0, 5, False))
    _, _, held_right = last_frame_seen(right, (0, 5, False))
    assert np.array_equal(mirror_frames(mirrored), held_left)
    assert not np.array_equal(held_left, held_right)


def test_training_selection_and_scoring_seeds_never_meet():
    config = ControllerConfig()
    train = {s for g in range(2000) for s in generation_seeds(config.seed, g, 16)}
    selection = set(range(config.eval_seed, config.eval_seed + config.eval_episodes))
    scoring = set(range(EvalConfig().seed, EvalConfig().seed + 100))
    assert not train & selection and not train & scoring and not selection & scoring
    assert min(train) >= TRAIN_SEED_BASE


def test_the_final_selection_keeps_the_best_mean_over_all_selection_tracks(tmp_path):
    """The winner's curse: the best mean-eval on a few tracks may be luck. Three evaluated
    means; the one that was luckiest on its mean-eval is not the best on the final tracks, and
    the final selection keeps the best mean over every selection track, on the real game."""
    policy = make_policy()
    config = ControllerConfig(eval_episodes=2, final_top=3, final_episodes=3, max_steps=25)
    params = np.random.default_rng(3).standard_normal((3, policy.spec.num_params)) * 0.5
    seeds = final_selection_seeds(config)
    assert seeds == [config.eval_seed + 2 + i for i in range(3)]
    with make_vec_env(backend="gymnasium", num_envs=3, max_steps=25, workers=0) as env:
        engine = RolloutEngine(policy, env)
        final = [engine.run(p[None], [(0, s) for s in seeds]).returns.sum() for p in params]
        order = np.argsort(final)  # worst to best on the final tracks
        assert final[order[-1]] - final[order[0]] > 1.0  # the candidates really differ
        state = new_state(ESSettings(num_params=policy.spec.num_params, popsize=4))
        for rank, c in enumerate(order):
            bonus = 0.2 if rank == 0 else 0.0  # the worst one's mean-eval was the best
            state.evaluated.append(
                {"generation": 10 * (c + 1), "params": params[c], "returns": np.full(2, bonus)}
            )
        state.evaluated.append(  # a fourth mean, evaluated worst: not replayed with top 3
            {"generation": 99, "params": params[order[-1]], "returns": np.full(2, -1e6)}
        )
        record = final_selection(state, engine, config, tmp_path)
    best = int(order[-1])
    assert record["chosen"] == 10 * (best + 1) != 10 * (order[0] + 1)
    assert {r["generation"] for r in record["candidates"]} == {10, 20, 30}
    np.testing.assert_array_equal(np.load(tmp_path / BEST), params[best])
    row = next(r for r in record["candidates"] if r["generation"] == record["chosen"])
    assert row["episodes"] == 5 and row["final_mean"] == pytest.approx(final[best] / 3, abs=1e-3)
    # every track's return is kept (paired comparisons later): the mean-eval's, then the final's
    assert len(row["returns"]) == 5 and row["returns"][:2] == [0.0, 0.0]
    assert np.mean(row["returns"]) == pytest.approx(row["selection_mean"])
    # a rerun with the same candidates reuses the record, and restores best.npy from it
    np.save(tmp_path / BEST, np.zeros(policy.spec.num_params))
    assert final_selection(state, None, config, tmp_path) == record
    np.testing.assert_array_equal(np.load(tmp_path / BEST), params[best])
    assert (tmp_path / SELECTION_JSON).exists()


def test_a_warm_start_gives_way_only_to_a_clear_gain_on_the_final_tracks():
    """The refit-s0 case: a refined mean, lucky on the mean-eval tracks that chose it, a few
    points ahead of its start on the final tracks but crashing on two of them, beats the start
    over every selection track; with a margin of 2 standard errors the start is kept, and a
    steady gain of 30 on every final track still replaces it."""
    rng = np.random.default_rng(0)
    evals, final = 32, 64
    start = 850 + rng.normal(0, 60, evals + final)
    faster = start + 25 + rng.normal(0, 10, evals + final)
    faster[:evals] += 20  # the winner's curse: it was chosen for its mean-eval
    faster[[40, 70]] = 250  # two crashes on the final tracks
    steady = start + 30
    steady[:evals] -= 30  # no luck at all on the mean-eval tracks

    def row(generation, returns):
        return {
            "generation": generation,
            "selection_mean": float(np.mean(returns)),
            "returns": returns.tolist(),
        }

    rows = [row(0, start), row(20, faster)]
    assert rows[1]["selection_mean"] > rows[0]["selection_mean"]
    gain = np.mean((faster - start)[evals:])
    assert 0 < gain < 2 * np.std((faster - start)[evals:], ddof=1) / np.sqrt(final)
    assert choose_candidate(rows, final, margin=0.0)["chosen"] == 20  # any gain: the old rule
    kept = choose_candidate(rows, final, margin=2.0)
    assert kept["chosen"] == 0
    assert kept["gain_over_start"] == pytest.approx(gain) and kept["gain_se"] > gain / 2
    assert choose_candidate([row(0, start), row(10, steady)], final, 2.0)["chosen"] == 10
    # no warm start: the best mean over every selection track, a tie to the later generation
    assert choose_candidate([row(10, steady), row(30, steady)], final, 2.0) == {"chosen": 30}


def test_a_checkpoint_without_evaluated_means_keeps_the_best_mean_eval(tmp_path, capsys):
    """A run resumed from a checkpoint made before the ES state kept its evaluated means has
    nothing to replay: it says so and leaves best.npy alone."""
    state = new_state(ESSettings(num_params=3, popsize=4))
    state.history.append({"generation": 10, "eval_mean": 500.0})
    assert final_selection(state, None, ControllerConfig(final_top=4), tmp_path) is None
    assert "made before evaluated means were kept" in capsys.readouterr().out
    assert not (tmp_path / BEST).exists() and not (tmp_path / SELECTION_JSON).exists()


@pytest.mark.parametrize("backend", ["gymnasium", pytest.param("envpool", marks=needs_envpool)])
def test_overlapped_engine_gives_the_synchronous_engines_returns(backend):
    """Two env groups stepped in turn (networks of one while the other's envs run) play the
    same episodes as one synchronous batch: same jobs, same seeds, same returns and lengths."""
    policy = make_policy()
    params = np.random.default_rng(3).standard_normal((3, policy.spec.num_params)) * 0.5
    jobs = [(c, s) for c in range(3) for s in (21, 22)]
    sync = RolloutEngine(policy, make_env_groups(backend, 4, 40, groups=1, workers=2))
    overlapped = RolloutEngine(policy, make_env_groups(backend, 4, 40, groups=2, workers=1))
    try:
        a = sync.run(params, jobs, early_stop=25)
        b = overlapped.run(params, jobs, early_stop=25)
    finally:
        sync.close()
        overlapped.close()
    assert len(overlapped.groups) == 2 and [g.num_envs for g in overlapped.groups] == [2, 2]
    np.testing.assert_allclose(b.returns, a.returns, atol=1e-3)
    np.testing.assert_array_equal(b.lengths, a.lengths)
    assert a.env_steps == b.env_steps == a.lengths.sum()
    assert len(set(np.round(a.returns, 3))) > 2


def test_early_stop_ends_hopeless_episodes():
    policy = make_policy(ControllerSpec(mode="z"))
    params = np.zeros((1, policy.spec.num_params))
    params[0, -2] = -20.0  # gas bias: tanh -> -1, gas 0: the car never moves
    with make_vec_env(backend="gymnasium", num_envs=2, max_steps=100, workers=0) as env:
        engine = RolloutEngine(policy, env)
        stopped = engine.run(params, [(0, 1), (0, 2)], early_stop=10)
        full = engine.run(params, [(0, 1)])
    assert (stopped.lengths < 40).all()
    assert full.lengths[0] == 100


def test_engine_rejects_wrong_parameter_shapes():
    policy = make_policy()
    env = make_vec_env(backend="gymnasium", num_envs=1, max_steps=5, workers=0)
    with env, pytest.raises(ValueError, match="expected params"):
        RolloutEngine(policy, env).run(np.zeros((1, 99)), [(0, 0)])


def test_policy_rejects_models_that_disagree():
    with pytest.raises(ValueError, match="z=64"):
        WorldModelPolicy(ConvVAE(z_size=64), MDNRNN(), ControllerSpec())
    with pytest.raises(ValueError, match="h=512"):
        WorldModelPolicy(ConvVAE(), MDNRNN(hidden_size=512), ControllerSpec())


needs_native_bf16 = pytest.mark.skipif(
    not bf16_supported(torch.device("cpu")), reason="this CPU has no AVX512-BF16 or AMX"
)


@needs_native_bf16
def test_bf16_encodes_v_in_bfloat16_and_keeps_z_and_actions_close():
    """The speed option really runs V in bf16 (z differs from float32, a little) and hands M
    and C float32; the actions stay within a few thousandths of float32's."""
    frames = np.random.default_rng(5).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    slots = np.arange(6)
    outputs = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        policy = WorldModelPolicy(ConvVAE(), MDNRNN(), ControllerSpec(), z_mode="mean", bf16=bf16)
        params = torch.as_tensor(
            np.random.default_rng(6).standard_normal((6, policy.spec.num_params)) * 0.5,
            dtype=torch.float32,
        )
        policy.reset(6)
        policy.start(slots, list(range(6)))
        actions, z = policy.act(frames, slots, params)
        outputs.append((actions, z, policy.h.clone()))
    (a32, z32, _), (a16, z16, h16) = outputs
    assert z16.dtype == torch.float32 and h16.dtype == torch.float32
    gap = (z16 - z32).abs().max().item()
    assert 0 < gap < 0.01 * z32.abs().max().item() + 1e-3
    np.testing.assert_allclose(a16, a32, atol=5e-3)


def test_bf16_is_refused_where_it_is_not_native(monkeypatch):
    import worldmodels.utils.device as device_module

    monkeypatch.setattr(device_module, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="no native bfloat16"):
        WorldModelPolicy(ConvVAE(), MDNRNN(), ControllerSpec(), bf16=True)


TARGET = np.linspace(-1, 1, 12)


def sphere(population, generation):
    return -np.sum((population - TARGET) ** 2, axis=1), len(population)


def settings(**kw):
    return ESSettings(num_params=12, popsize=8, sigma0=0.5, eval_every=5, **kw)


def evaluate(params):
    return np.array([-np.sum((params - TARGET) ** 2)])


def test_cmaes_improves_a_known_objective(tmp_path):
    state = run_es(settings(generations=60), sphere, tmp_path, evaluate=evaluate, progress=False)
    assert state.history[0]["mean"] < -3
    assert state.history[-1]["mean"] > -0.05
    assert state.best_eval > -0.01
    np.testing.assert_allclose(state.best_params, TARGET, atol=0.1)
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("generation,best,mean,worst") and len(log) == 61


def test_cmaes_resumes_exactly(tmp_path):
    straight = run_es(
        settings(generations=10), sphere, tmp_path / "a", evaluate=evaluate, progress=False
    )
    run_es(settings(generations=4), sphere, tmp_path / "b", evaluate=evaluate, progress=False)
    resumed = run_es(
        settings(generations=10),
        sphere,
        tmp_path / "b",
        evaluate=evaluate,
        resume=True,
        progress=False,
    )
    np.testing.assert_array_equal(resumed.es.mean, straight.es.mean)
    keys = ("best", "mean", "worst", "eval_mean")
    assert [[r[k] for k in keys] for r in resumed.history] == [
        [r[k] for k in keys] for r in straight.history
    ]


def test_controller_init_is_cmaes_first_mean_and_a_wrong_file_is_named(tmp_path):
    """controller.init: CMA-ES's first population is drawn around the given parameters."""
    from worldmodels.controller.train import es_settings

    spec = ControllerSpec(z_size=32, hidden_size=256, mode="zh")
    given = np.linspace(-1, 1, spec.num_params)
    np.save(tmp_path / "best.npy", given)
    config = ControllerConfig(popsize=8, sigma0=1e-6, init=str(tmp_path / "best.npy"))
    state = new_state(es_settings(config, spec))
    np.testing.assert_allclose(np.asarray(state.es.ask()), np.tile(given, (8, 1)), atol=1e-4)
    assert not np.asarray(new_state(es_settings(ControllerConfig(), spec)).es.mean).any()
    np.save(tmp_path / "short.npy", given[:10])
    short = ControllerConfig(init=str(tmp_path / "short.npy"))
    with pytest.raises(ValueError, match="short.npy: expected a vector of 867"):
        es_settings(short, spec)
    # a resumed run continues its saved mean: its init file may be gone by then
    (tmp_path / "best.npy").unlink()
    assert es_settings(config, spec, resume=True).x0 is None


def test_cmaes_refuses_other_settings_and_corrupt_checkpoints(tmp_path):
    run_es(settings(generations=2), sphere, tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings .*popsize: 8 there, 16 now"):
        run_es(ESSettings(num_params=12, popsize=16, sigma0=0.5), sphere, tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="resume"):
        run_es(settings(generations=3), sphere, tmp_path, progress=False)
    (tmp_path / STATE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="es_state.pkl is corrupt"):
        run_es(settings(generations=3), sphere, tmp_path, resume=True)
    (tmp_path / STATE).write_bytes(pickle.dumps({"not": "a state"}))
    with pytest.raises(ValueError, match="not a CMA-ES checkpoint"):
        run_es(settings(generations=3), sphere, tmp_path, resume=True)


class _Touch:
    """Unpickled, it would create a file: the harmless stand-in for foreign code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


class _CmaWithEvalOptions:
    """Unpickled, it would call pycma's constructor, which evaluates option strings."""

    def __reduce__(self):
        import cma

        marker = "__import__('pathlib').Path('marker').touch() or 4"
        return (cma.CMAEvolutionStrategy, (np.zeros(2), 0.5, {"popsize": marker}))


class _Dunder:
    """Unpickled, it would reach a function's globals through getattr."""

    def __reduce__(self):
        return (getattr, (np.linalg.eigh, "__globals__"))


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (lambda tmp: _Touch(tmp / "pwned"), "asks for pathlib.Path.touch"),
        (lambda tmp: _CmaWithEvalOptions(), "asks to call cma.evolution_strategy.CMAEvolution"),
        (lambda tmp: _Dunder(), "asks for attribute '__globals__'"),
    ],
)
def test_a_checkpoint_that_would_run_foreign_code_is_refused(
    tmp_path, monkeypatch, payload, refused
):
    """A run folder from someone else is data: loading its ES state runs nothing foreign."""
    monkeypatch.chdir(tmp_path)
    run_es(settings(generations=2), sphere, tmp_path, progress=False)
    state = pickle.loads((tmp_path / STATE).read_bytes())
    state.history.append({"note": payload(tmp_path)})
    (tmp_path / STATE).write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match=f"es_state.pkl refused: it {refused}"):
        run_es(settings(generations=3), sphere, tmp_path, resume=True)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "marker").exists()


def test_weight_decay_penalises_large_weights(tmp_path):
    def flat(population, generation):
        return np.zeros(len(population)), len(population)

    state = run_es(
        ESSettings(
            num_params=6, popsize=8, sigma0=1.0, generations=40, weight_decay=10.0, eval_every=0
        ),
        flat,
        tmp_path,
        progress=False,
    )
    assert np.abs(state.es.mean).max() < 0.3  # pulled towards zero, never pushed away


def shuffled_latents(vae, seed: int = 0):
    """A copy of V whose latent dimension i is the original's dimension perm[i], negated where
    sign[i] is -1 (the same features, read in another order: what C's warm start meets when V
    moves)."""
    import copy

    rng = np.random.default_rng(seed)
    perm = rng.permutation(vae.z_size)
    sign = np.where(rng.random(vae.z_size) < 0.5, -1.0, 1.0)
    moved = copy.deepcopy(vae)
    with torch.no_grad():
        s = torch.as_tensor(sign, dtype=torch.float32)
        moved.fc_mu.weight.copy_(vae.fc_mu.weight[perm] * s[:, None])
        moved.fc_mu.bias.copy_(vae.fc_mu.bias[perm] * s)
    return moved


def test_a_refitted_controller_reads_a_shuffled_latent_space_as_before(smoke_run):
    """C on z alone, V's latent dimensions shuffled and half negated: the old weights on the
    new z drive otherwise, the refitted ones act on the same frames as the old C did."""
    from worldmodels.controller.refit import controller_inputs, refit_controller
    from worldmodels.data.store import EpisodeStore
    from worldmodels.vision.train import load_vae

    vae = load_vae(smoke_run / "vae" / "vae.pt").eval()
    moved = shuffled_latents(vae)
    spec = ControllerSpec(z_size=vae.z_size, mode="z")
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(0, 0.5, (vae.z_size, 3)), rng.normal(0, 0.5, 3)
    old = np.concatenate([weight.ravel(), bias])
    store = EpisodeStore(smoke_run / "episodes")
    result = refit_controller(old, spec, (vae, None), (moved, None), store, ridge=1e-6)
    assert min(result.r2) > 0.999 and max(result.r2_unchanged) < 0.5
    assert result.steps == store.num_steps and result.episodes == list(range(len(store)))
    x_old, x_new = (
        torch.as_tensor(controller_inputs(store[0], v, None, spec), dtype=torch.float32)
        for v in (vae, moved)
    )

    def act(params, x):
        p = torch.as_tensor(params, dtype=torch.float32).expand(len(x), -1)
        return controller_actions(p, x, spec).numpy()

    np.testing.assert_allclose(act(result.params, x_new), act(old, x_old), atol=2e-3)
    assert np.abs(act(old, x_new) - act(old, x_old)).max() > 0.3


def test_refit_init_is_refused_where_it_cannot_refit(smoke_run, tmp_path, capsys):
    """A warm start with no controller.json beside it names the file that is missing; a
    two-layer C (z_hidden) and --refit-init without --init are refused."""
    import shutil

    from worldmodels.cli import main

    with pytest.raises(ValueError, match="refit_init"):
        ControllerConfig(mode="z_hidden", refit_init=True).validate()
    lone = tmp_path / "lone" / "best.npy"
    lone.parent.mkdir()
    shutil.copy(smoke_run / "controller" / BEST, lone)
    args = ["train-controller", "--vae", str(smoke_run / "vae" / "vae.pt")]
    args += ["--mdrnn", str(smoke_run / "mdrnn" / "mdrnn.pt"), "--out", str(tmp_path / "c")]
    args += ["--generations", "1", "--popsize", "2", "--rollouts", "1", "--no-progress"]
    args += ["--refit-init", str(smoke_run / "episodes")]
    assert main(args) == 2
    assert "needs --init" in capsys.readouterr().err
    assert main([*args, "--init", str(lone)]) == 2
    assert str(lone.parent / "controller.json") in capsys.readouterr().err
