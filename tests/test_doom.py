"""Doom TakeCover on real ViZDoom: the batched env, its actions, collection, the controller."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from worldmodels.cli import main
from worldmodels.config import CollectConfig
from worldmodels.controller.model import ControllerSpec, controller_actions, doom_direction
from worldmodels.data.policies import DoomRandomPolicy
from worldmodels.data.store import EpisodeStore, StoreError
from worldmodels.envs import make_vec_env
from worldmodels.envs.doom import (
    VecDoom,
    VizdoomMissingError,
    preprocess_doom_frames,
    require_vizdoom,
)

pytest.importorskip("vizdoom", reason='Doom tests need vizdoom: pip install -e ".[doom]"')


def play(env, actions_fn, seed, limit=2100):
    """One episode in slot 0; returns (length, return, frames seen)."""
    obs = env.reset(seeds=[seed])
    frames, total, n = [obs[0]], 0.0, 0
    while n < limit:
        result = env.step(actions_fn(n))
        n, total = n + 1, total + float(result.reward[0])
        frames.append(result.obs[0])
        if result.terminated[0] or result.truncated[0]:
            break
    return n, total, frames


def test_a_real_takecover_episode():
    with VecDoom(num_envs=1, max_steps=2100, workers=0) as env:
        obs = env.reset(seeds=[3])
        assert obs.shape == (1, 240, 320, 3) and obs.dtype == np.uint8 and obs.std() > 10
        n, total, _ = play(env, lambda t: np.array([[0.0]]), seed=3)
        assert 30 < n < 2100 and total == n  # +1 per tic survived; standing still dies
        again, _, _ = play(env, lambda t: np.array([[0.0]]), seed=3)
        assert again == n  # the same seed and actions replay the episode
        # the paper's mapping: < -1/3 left, > 1/3 right, else stay -> different views
        _, _, left = play(env, lambda t: np.array([[-0.9]]), seed=3, limit=20)
        _, _, right = play(env, lambda t: np.array([[0.9]]), seed=3, limit=20)
        _, _, stay = play(env, lambda t: np.array([[0.2]]), seed=3, limit=20)
        assert np.abs(left[19].astype(int) - right[19]).mean() > 5
        assert np.abs(stay[19].astype(int) - left[19]).mean() > 1


@pytest.mark.parametrize(
    ("action", "pressed"),
    [
        (-0.9, {"MOVE_LEFT"}),
        (-0.34, {"MOVE_LEFT"}),
        (0.0, set()),
        (0.3, set()),
        (0.9, {"MOVE_RIGHT"}),
    ],
)
def test_each_action_presses_the_papers_button_in_the_game(action, pressed):
    """Read back from ViZDoom which buttons a step pressed (the bug: -0.9 pressed nothing and
    0.0 pressed MOVE_LEFT, while the views of the three still differed)."""
    with VecDoom(num_envs=1, max_steps=50, workers=0) as env:
        env.reset(seeds=[5])
        env.step(np.array([[action]], np.float32))
        game = env._pool.local[0].env.unwrapped.game
        names = [b.name for b in game.get_available_buttons()]
        last = game.get_last_action()
        assert {n for n, v in zip(names, last, strict=True) if v} == pressed


def test_the_step_limit_truncates_and_slots_stay_apart():
    with make_vec_env("doom", num_envs=3, max_steps=15, workers=2) as env:
        assert isinstance(env, VecDoom)
        env.reset(seeds=[0, 1, 2])
        active = np.array([True, True, False])
        for _ in range(15):
            result = env.step(np.zeros((3, 3), np.float32), active)  # the engine's (N, 3) buffer
        assert result.truncated.tolist() == [True, True, False]
        assert result.reward.tolist() == [1.0, 1.0, 0.0]
        with pytest.raises(ValueError, match=r"expected actions of shape \(3,\)"):
            env.step(np.zeros(2))


def test_games_started_together_find_vizdooms_folder_made(monkeypatch, tmp_path):
    """Two games starting at once in a folder without ./_vizdoom race to make it and one
    engine dies (a collect in a fresh folder crashed so): the folder exists before any game."""
    import worldmodels.envs.doom as doom_module

    monkeypatch.chdir(tmp_path)
    folder_made = []
    real_workers = doom_module.EnvWorkers

    def workers_noting_the_folder(*args, **kwargs):
        folder_made.append((tmp_path / "_vizdoom").is_dir())
        return real_workers(*args, **kwargs)

    monkeypatch.setattr(doom_module, "EnvWorkers", workers_noting_the_folder)
    with VecDoom(num_envs=2, max_steps=20, workers=2) as env:
        assert env.reset(seeds=[1, 2]).shape[0] == 2
    assert folder_made == [True]


def test_actions_map_three_ways_and_frames_shrink_to_64():
    a = np.array([-1.0, -0.34, -0.33, 0.0, 0.33, 0.34, 1.0])
    assert doom_direction(a).tolist() == [-1, -1, 0, 0, 0, 1, 1]
    assert doom_direction(a[:, None]).tolist() == doom_direction(a).tolist()
    frames = np.zeros((2, 240, 320, 3), np.uint8)
    frames[:, 200:] = 255  # the rows the paper crops away (its 400:480 of 480)
    small = preprocess_doom_frames(frames)
    assert small.shape == (2, 64, 64, 3) and small.max() == 0


def test_the_doom_controller_is_the_papers():
    spec = ControllerSpec.doom()
    assert spec.num_params == 1088 and spec.input_size == 64 + 512 + 512
    params = torch.randn(5, 1088)
    x = torch.randn(5, 1088)
    out = controller_actions(params, x, spec)
    expected = torch.tanh(torch.einsum("ni,ni->n", x, params))[:, None]  # no bias
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="one output"):
        ControllerSpec(z_size=64, hidden_size=512, mode="zch")


def test_exploration_holds_each_random_action_1_to_10_frames():
    policy = DoomRandomPolicy(2)
    policy.start(0, np.random.default_rng(0))
    policy.start(1, np.random.default_rng(1))
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    acts = np.stack([policy.act(frames, np.array([True, True])) for _ in range(400)])
    assert acts.shape == (400, 2, 1) and acts.min() >= -1 and acts.max() <= 1
    for slot in range(2):
        a = acts[:, slot, 0]
        changes = np.flatnonzero(np.diff(a) != 0) + 1
        runs = np.diff(np.concatenate([[0], changes, [len(a)]]))[:-1]
        assert runs.min() >= 1 and runs.max() <= 10 and len(set(runs)) > 3
    again = DoomRandomPolicy(2)
    again.start(0, np.random.default_rng(0))
    again.start(1, np.random.default_rng(1))
    repeat = np.stack([again.act(frames, np.array([True, True])) for _ in range(400)])
    np.testing.assert_array_equal(acts, repeat)  # an episode's actions follow its seed


def hold_lengths(policy, steps: int) -> np.ndarray:
    policy.start(0, np.random.default_rng(3))
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    a = np.stack([policy.act(frames, np.array([True]))[0, 0] for _ in range(steps)])
    assert a.min() >= -1 and a.max() <= 1
    changes = np.flatnonzero(np.diff(a) != 0) + 1
    return np.diff(np.concatenate([[0], changes, [len(a)]]))[:-1]


def test_long_holds_policy_mixes_the_papers_holds_with_holds_of_hundreds_of_frames():
    from worldmodels.data.policies import DoomLongHoldsPolicy

    runs = hold_lengths(DoomLongHoldsPolicy(1), 20_000)
    short, long = runs[runs <= 10], runs[runs > 10]
    assert runs.max() <= 300 and (runs > 150).sum() >= 5  # holds of hundreds of frames exist
    assert 0.3 < len(long) / len(runs) < 0.7 and len(short) > 0  # about half of the holds
    assert hold_lengths(DoomRandomPolicy(1), 5_000).max() <= 10  # the paper's stays as it was
    CollectConfig(env="doom", backend="gymnasium", policy="doom_long_holds").validate()


def test_mixed_policy_plays_half_its_episodes_as_the_paper_and_half_with_long_holds():
    from worldmodels.data.policies import DoomMixedPolicy

    frames = np.zeros((1, 64, 64, 3), np.uint8)
    longest = []
    for seed in range(40):
        policy = DoomMixedPolicy(1)
        policy.start(0, np.random.default_rng(seed))
        a = np.array([policy.act(frames, np.array([True]))[0, 0] for _ in range(1500)])
        changes = np.flatnonzero(np.diff(a) != 0) + 1
        longest.append(np.diff(np.concatenate([[0], changes]))[1:].max())
    papers = sum(m <= 10 for m in longest)
    assert 10 <= papers <= 30  # about half the episodes hold every action 1-10 frames
    assert max(longest) > 100  # the others hold some for hundreds
    CollectConfig(env="doom", backend="gymnasium", policy="doom_mixed").validate()


def test_collect_doom_through_the_usual_collector(tmp_path, capsys):
    out = tmp_path / "episodes"
    args = ["collect", "--env", "doom", "--out", str(out), "--episodes", "2"]
    more = ["--max-steps", "40", "--min-length", "0", "--num-envs", "2", "--no-progress"]
    assert main([*args, *more]) == 0
    store = EpisodeStore(out)
    assert len(store) == 2 and store.manifest["identity"]["env_id"] == "VizdoomTakeCover-v1"
    for ep in store:
        assert ep["obs"].shape[1:] == (64, 64, 3) and ep["obs"].std() > 5
        assert ep["actions"].shape == (len(ep), 1)
        assert (ep["rewards"] == 1).all()
        assert ep["terminated"][-1] or ep["truncated"][-1]
    with pytest.raises(ValueError, match="drives CarRacing"):
        CollectConfig(env="doom", backend="gymnasium", policy="brownian").validate()
    # a store written before the button fix (no encoding recorded) is refused by every reader
    # and by a resumed collection, naming the store
    assert store.manifest["identity"]["action_encoding"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["identity"]["action_encoding"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=f"{out}: doom actions written with encoding none"):
        EpisodeStore(out)
    capsys.readouterr()
    assert main(["train-vae", "--store", str(out), "--out", str(tmp_path / "v")]) == 2
    assert "encoding none recorded (written before the Doom button fix)" in capsys.readouterr().err
    assert main([*args[:-1], "3", *more]) == 2
    assert "action_encoding" in capsys.readouterr().err


def test_short_episodes_are_dropped_and_replayed_with_new_seeds(tmp_path):
    from worldmodels.data.collect import pool_seed
    from worldmodels.execution import collect

    config = CollectConfig.for_env("doom", episodes=4, max_steps=400, num_envs=2, min_length=300)
    assert config.policy == "doom_random" and config.backend == "auto"
    summary = collect(config, str(tmp_path / "a"), progress=False)
    assert summary.backend == "gymnasium"
    store = EpisodeStore(tmp_path / "a")
    assert store.manifest["identity"]["min_length"] == 300
    metas = [store[i].meta for i in range(4)]
    assert all(m["length"] >= 300 for m in metas)
    assert sum(m["dropped_before"] for m in metas) > 0  # random play often dies sooner
    for i, m in enumerate(metas):
        tries = m["dropped_before"]
        assert m["seed"] == (config.seed + i if tries == 0 else pool_seed(config.seed, i, tries))
    again = collect(config, str(tmp_path / "b"), progress=False)  # the same tries, the same data
    assert again.frames_new == summary.frames_new
    other = EpisodeStore(tmp_path / "b")
    for i in range(4):
        np.testing.assert_array_equal(store[i]["actions"], other[i]["actions"])
    with pytest.raises(ValueError, match="min_length must be in 0..max_steps"):
        CollectConfig.for_env("doom", max_steps=50).validate()


def test_a_missing_vizdoom_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vizdoom", None)  # what import sees without the package
    with pytest.raises(VizdoomMissingError, match=r'pip install -e "\.\[doom\]"'):
        require_vizdoom()
    with pytest.raises(VizdoomMissingError, match="vizdoom package, which is not installed"):
        VecDoom(1)
    assert main(["collect", "--env", "doom", "--out", str(tmp_path / "x")]) == 2
    assert 'pip install -e ".[doom]"' in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written


def test_doom_smoke_pipeline_trains_in_the_dream_and_scores_in_the_game(doom_run):
    import json

    from worldmodels.pipeline import STAGES

    stages = json.loads((doom_run / "stages.json").read_text())
    assert set(stages) == set(STAGES)
    assert "in the dream (tau 1.15)" in stages["train-controller"]["summary"]
    for path in ("controller/best.npy", "controller/dream.json", "controller/log.csv", "eval.json"):
        assert (doom_run / path).exists(), path
    series = EpisodeStore(doom_run / "series")
    assert series.manifest["z_size"] == 64 and series.manifest["action_size"] == 1
    ev = json.loads((doom_run / "eval.json").read_text())
    assert ev["env_id"] == "VizdoomTakeCover-v1" and ev["episodes"] == 2
    assert all(1 <= r <= 100 and r == int(r) for r in ev["returns"])  # survival steps
    report = (doom_run / "report.md").read_text()
    assert "VizdoomTakeCover-v1" in report and "dream_vs_real.gif" in report
    assert (doom_run / "controller" / "dream_vs_real.gif").stat().st_size > 1000
    assert (doom_run / "controller" / "dream_vs_real.png").exists()
    # the held-action probe ran before CMA-ES, the game played beside the dream
    probe = json.loads((doom_run / "controller" / "held_actions.json").read_text())
    assert [r["action"] for r in probe["rows"]] == ["left", "stay", "right"]
    assert all(r["game_length"] >= 1 and r["dream_length"] >= 1 for r in probe["rows"])
    assert "held actions: " in stages["train-controller"]["summary"]


def test_a_second_doom_run_skips_finished_stages(doom_run, capsys):
    from worldmodels.config import preset
    from worldmodels.pipeline import STAGES, run_pipeline

    run_pipeline(preset("doom-smoke"), doom_run, preset_name="doom-smoke", progress=False)
    assert capsys.readouterr().out.count("done already") == len(STAGES)


def test_a_doom_agent_loads_and_acts_on_raw_screens(doom_run, tmp_path, capsys):
    import worldmodels

    agent = worldmodels.Agent.load(doom_run, device="cpu")
    assert agent.env == "doom" and agent.spec.num_params == 64 + 2 * 32  # smoke M: LSTM 32
    agent.reset(batch_size=2, seeds=[0, 1])
    screens = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    actions = agent.act(screens)
    assert actions.shape == (2, 1) and np.abs(actions).max() <= 1
    args = ["evaluate", str(doom_run), "--episodes", "1", "--max-steps", "30", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "e.json")]) == 0
    assert "over 1 episodes (doom, gymnasium" in capsys.readouterr().out
    assert main([*args, "--video", str(tmp_path / "v.gif")]) == 2
    assert "records CarRacing episodes" in capsys.readouterr().err


def test_dream_train_and_sweep_commands(doom_run, tmp_path, capsys):
    models = [
        "--mdrnn",
        str(doom_run / "mdrnn" / "mdrnn.pt"),
        "--series",
        str(doom_run / "series"),
        "--vae",
        str(doom_run / "vae" / "vae.pt"),
    ]
    small = ["--popsize", "4", "--rollouts", "2", "--dream-max-steps", "20", "--no-progress"]
    out = tmp_path / "c"
    check = ["dream-check", *models[:4], "--temperature", "0.5", "1.5", "--dream-max-steps", "20"]
    assert main(check) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "(tau 0.5, 4 episodes)" in lines[0] and "tau 1.5" in lines[1]
    args = ["dream-train", *models, "--out", str(out), *small, "--eval-every", "0"]
    assert main([*args, "--generations", "1"]) == 0
    assert main([*args, "--generations", "2", "--resume"]) == 0
    assert "2 generations in the dream" in capsys.readouterr().out
    assert main([*args, "--generations", "3"]) == 2  # no --resume: refused, nothing lost
    assert "pass resume" in capsys.readouterr().err
    sweep = tmp_path / "sweep"
    args = ["dream-sweep", *models, "--out", str(sweep), *small, "--generations", "1"]
    more = ["--temperatures", "0.5", "1.5", "--eval-episodes", "1", "--max-steps", "20"]
    assert main([*args, *more, "--dream-episodes", "8", "--num-envs", "1"]) == 0
    table = (sweep / "sweep.md").read_text()
    assert "| 0.5 |" in table and "| 1.5 |" in table
    assert (sweep / "tau_0.5" / "best.npy").exists() and (sweep / "tau_1.5" / "log.csv").exists()
    # a later sweep in the same folder adds its temperatures to the table; one already scored
    # on as many episodes is not scored again
    scored = (sweep / "tau_1.5" / "sweep_row.json").stat().st_mtime_ns
    more[1:3] = ["1.0", "1.5"]
    assert main([*args, *more, "--dream-episodes", "8", "--num-envs", "1"]) == 0
    table = (sweep / "sweep.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:5]] == ["0.5", "1", "1.5"]
    assert (sweep / "tau_1.5" / "sweep_row.json").stat().st_mtime_ns == scored
    (sweep / "tau_1.5" / "sweep_row.json").write_text('{"tau": 1}')
    assert main([*args, *more, "--dream-episodes", "8", "--num-envs", "1"]) == 2
    assert "tau_1.5/sweep_row.json: not a sweep row" in capsys.readouterr().err


def test_the_real_game_reference_evolves_doom_c_in_vizdoom(doom_run, tmp_path, capsys):
    """`train-controller --env doom`: the same [z, c, h] -> 1 C, the same V and M, CMA-ES on
    survival in real ViZDoom games; evaluate scores it like the dream-trained C."""
    import json

    out = tmp_path / "real" / "controller"
    args = ["train-controller", "--env", "doom", "--out", str(out), "--no-progress"]
    models = [
        "--vae",
        str(doom_run / "vae" / "vae.pt"),
        "--mdrnn",
        str(doom_run / "mdrnn/mdrnn.pt"),
    ]
    sizes = ["--popsize", "4", "--rollouts", "1", "--generations", "2", "--num-envs", "4"]
    more = ["--max-steps", "60", "--eval-every", "1", "--eval-episodes", "2"]
    assert main([*args, *models, *sizes, *more]) == 0
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 3 and all(0 < float(row.split(",")[1]) <= 60 for row in log[1:])
    info = json.loads((out / "controller.json").read_text())
    assert info["env"] == "doom" and info["spec"]["mode"] == "zch"
    assert main(["evaluate", str(out), "--episodes", "2", "--max-steps", "60"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["env_id"] == "VizdoomTakeCover-v1"
    capsys.readouterr()
    assert main([*args[:-1], "--mode", "z_hidden", *models]) == 2  # CarRacing's only: refused
    assert "unknown mode 'z_hidden'; choose one of zch, zh, z" in capsys.readouterr().err


def test_horizontal_shift_finds_how_far_the_scene_moved():
    from worldmodels.dream.probe import horizontal_shift

    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert horizontal_shift(frame, np.roll(frame, 3, axis=1)) == 3
    assert horizontal_shift(frame, np.roll(frame, -5, axis=1)) == -5
    assert horizontal_shift(frame, frame) == 0


def hand_built_doom_m(done_bias: float, right_saves: bool = False):
    """z 64, one action, LSTM 32, done head; z stays put (sigma e^-7). ``done_bias`` alone
    sets the death odds, or, with ``right_saves``, holding right (a > 0) is never killed and
    anything else dies at once (the LSTM's unit 0 follows the action)."""
    from worldmodels.memory.mdrnn import MDNRNN

    m = MDNRNN(z_size=64, action_size=1, hidden_size=32, done_head=True)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        k = m.num_gaussians
        m.head.bias[: m.n_mixture_outputs].view(64, 3 * k)[:, 2 * k :] = -7.0
        m.head.bias[-1] = done_bias
        if right_saves:
            m.lstm.weight_ih_l0[2 * 32, 64] = 10.0  # cell candidate of unit 0 <- action
            m.lstm.bias_ih_l0[0:32] = 10.0  # input gate open
            m.lstm.bias_ih_l0[3 * 32 :] = 10.0  # output gate open
            m.head.weight[-1, 0] = -40.0  # done logit = 20 - 40 h0: alive only when h0 > 0.5
    return m.eval()


def test_held_action_probes_flag_the_faults_seen_so_far(doom_run, capsys):
    """A dream that never kills, and one where holding right is safe: the probe warns for
    them, and the real game is played from the same starts with the same held actions."""
    from worldmodels.config import DreamConfig
    from worldmodels.dream.probe import probe_held_actions
    from worldmodels.vision.train import load_vae

    vae = load_vae(doom_run / "vae" / "vae.pt", "cpu")
    dream = DreamConfig(temperature=1.0, max_steps=300)
    series = doom_run / "series"
    never = probe_held_actions(hand_built_doom_m(-20.0), vae, series, dream, episodes=3)
    assert [r.action for r in never.rows] == ["left", "stay", "right"]
    assert all(r.dream_length == 300 and r.dream_deaths == 0 for r in never.rows)
    assert all(0 < r.game_length < 300 * 2 / 3 for r in never.rows)  # the game kills
    assert len(never.warnings()) == 3 and "longer in the dream" in never.warnings()[0]
    right = probe_held_actions(
        hand_built_doom_m(20.0, right_saves=True), vae, series, dream, episodes=3
    )
    by = {r.action: r for r in right.rows}
    assert by["right"].dream_length == 300 and by["left"].dream_length == 1
    assert any(w.startswith("holding right: survives") for w in right.warnings())
    assert "WARNING: holding right" in right.table()
    # in the game, walking left moves the scene right, walking right moves it left
    assert by["left"].game_shift >= 3 and by["right"].game_shift <= -3
    assert by["stay"].game_shift == 0


def test_dream_check_prints_the_held_action_table(doom_run, capsys):
    base = ["dream-check", "--mdrnn", str(doom_run / "mdrnn" / "mdrnn.pt")]
    base += ["--series", str(doom_run / "series"), "--dream-max-steps", "100", "--held-actions"]
    assert main(base) == 2
    assert "--held-actions needs --vae" in capsys.readouterr().err
    vae = ["--vae", str(doom_run / "vae" / "vae.pt"), "--probe-episodes", "2"]
    assert main([*base, *vae]) == 0
    out = capsys.readouterr().out
    assert "held actions from 2 real starts" in out
    assert all(f"\n{name} " in out for name in ("left", "stay", "right"))


def test_driving_counts_directions_switches_and_stretches():
    from worldmodels.dream.probe import driving

    # left left stay stay right right | right right right right
    actions = [np.array([-0.9, -0.5, 0.0, 0.2, 0.9, 0.9]), np.full(4, 0.9)]
    d = driving("game", [6, 4], [True, False], actions)
    assert (d.left, d.stay, d.right) == (0.2, 0.2, 0.6)
    assert d.switches == pytest.approx(100 * 2 / 10)  # two changes in ten steps
    assert d.mean_hold == pytest.approx(10 / 4)  # four stretches: 2, 2, 2 and 4 steps
    assert d.deaths == 0.5 and d.length == 5.0


def never_killing_copy(mdrnn):
    """The same M with its done head silenced: its dreams never end before the limit."""
    import copy

    m = copy.deepcopy(mdrnn)
    with torch.no_grad():
        m.head.weight[-1] = 0.0
        m.head.bias[-1] = -20.0
    return m.eval()


def test_controller_probe_plays_c_in_the_game_as_evaluation_does(doom_run):
    """The probe's game is the real game played by the agent (the lengths of `evaluate` on
    the same seeds); a dream that never kills is flagged, for C and for its replayed actions."""
    from worldmodels.agent import Agent
    from worldmodels.config import DreamConfig
    from worldmodels.controller.evaluate import evaluate_agent
    from worldmodels.dream.probe import _episode_seeds, probe_controller
    from worldmodels.memory.data import open_series
    from worldmodels.memory.train import load_mdrnn

    agent = Agent.load(doom_run, device="cpu")
    series = doom_run / "series"
    m = never_killing_copy(load_mdrnn(doom_run / "mdrnn" / "mdrnn.pt", "cpu"))
    dream = DreamConfig(temperature=1.0, max_steps=1000)
    probe = probe_controller(agent, m, series, dream, episodes=2)
    game, dreamt, replay = probe.rows
    assert [r.where for r in probe.rows] == ["game", "dream", "dream, game's actions"]
    store = open_series(series, m.z_size, m.action_size).store
    seeds = _episode_seeds(store, [0, len(store) - 1])
    for seed, length in zip(seeds, game.lengths, strict=True):
        ev = evaluate_agent(agent, 1, seed, num_envs=1, max_steps=1000, progress=False)
        assert ev.returns[0] == length  # +1 a step survived: the return is the length
    assert game.deaths == 1.0 and game.length < 1000 / 1.5  # the game kills, soon
    assert dreamt.lengths == [1000, 1000] and replay.lengths == [1000, 1000]
    assert dreamt.deaths == 0 and replay.deaths == 0
    for r in probe.rows:
        assert r.left + r.stay + r.right == pytest.approx(1.0)
    assert probe.warnings() == [
        f"C survives {1000 / game.length:.1f}x longer in the dream than in the game"
    ]
    assert "WARNING: C survives" in probe.table()


def test_dream_check_prints_the_controller_table(doom_run, capsys):
    args = ["dream-check", "--mdrnn", str(doom_run / "mdrnn" / "mdrnn.pt")]
    args += ["--series", str(doom_run / "series"), "--dream-max-steps", "100"]
    args += ["--controller", str(doom_run), "--probe-episodes", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the controller from 2 real starts" in out
    assert all(f"\n{where} " in out for where in ("game", "dream", "dream, game's actions"))
    assert "note:" not in out  # the run's own M


def test_doom_controllers_may_read_less_of_m():
    """A named deviation: Doom's C on [z, h] or z alone, still one tanh output and no bias;
    modes that do not fit the game are refused."""
    from worldmodels.config import ControllerConfig

    for mode, size in (("zh", 64 + 512), ("z", 64)):
        spec = ControllerSpec.doom(64, 512, mode)
        assert spec.num_params == size and spec.input_size == size
        params, x = torch.randn(5, size), torch.randn(5, size)
        expected = torch.tanh(torch.einsum("ni,ni->n", x, params))[:, None]
        torch.testing.assert_close(controller_actions(params, x, spec), expected)
        ControllerConfig(env="doom", mode=mode).validate()
    with pytest.raises(ValueError, match="a Doom controller"):
        ControllerSpec.doom(64, 512, "z_hidden")
    with pytest.raises(ValueError, match="mode"):
        ControllerConfig(env="doom", mode="z_hidden").validate()
    with pytest.raises(ValueError, match="mode 'zch' is Doom's"):
        ControllerConfig(env="carracing", mode="zch").validate()


def test_a_doom_c_on_z_alone_trains_in_the_dream_and_plays_without_m(doom_run, tmp_path, capsys):
    from worldmodels.agent import Agent

    out = tmp_path / "z"
    args = ["dream-train", "--mdrnn", str(doom_run / "mdrnn" / "mdrnn.pt")]
    args += ["--series", str(doom_run / "series"), "--vae", str(doom_run / "vae" / "vae.pt")]
    args += ["--out", str(out), "--mode", "z", "--popsize", "4", "--rollouts", "2"]
    args += ["--generations", "2", "--dream-max-steps", "30", "--eval-every", "0"]
    assert main([*args, "--no-progress", "--gif", str(tmp_path / "z.gif")]) == 0
    assert f"{tmp_path / 'z.gif'}: real game" in capsys.readouterr().out  # dreamt in M
    assert (tmp_path / "z.gif").exists()
    agent = Agent.load(out, device="cpu")
    assert agent.spec.mode == "z" and agent.spec.num_params == 64
    assert agent.policy.mdrnn is None  # in the game C needs only V
    assert main(["evaluate", str(out), "--episodes", "2", "--max-steps", "60"]) == 0
    assert json.loads((out / "eval.json").read_text())["mean"] > 0


def test_doom_rounds_are_compared_in_the_game(tmp_path):
    """iterate.keep_best_round on a Doom run trained in the dream: both rounds' agents play the
    same fresh selection episodes in ViZDoom, their survival is recorded, and the better is the
    run's agent (the one `evaluate` scores)."""
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent

    out = tmp_path / "run"
    args = ["pipeline", "--preset", "doom-smoke", "--out", str(out), "--no-progress"]
    for setting in ("iterate.rounds=2", "iterate.warm_start=true", "iterate.keep_best_round=true"):
        args += ["--set", setting]
    assert main(args) == 0
    record = json.loads((out / "controller" / "rounds.json").read_text())
    assert [row["folder"] for row in record["rounds"]] == ["round1", "."]
    first, last = record["seeds"]
    for row in record["rounds"]:
        played = evaluate_agent(
            Agent.load(out / row["folder"], device="cpu"),
            episodes=last - first + 1,
            seed=first,
            num_envs=2,
            max_steps=100,
            progress=False,
        )
        assert played.returns.tolist() == row["returns"]  # survival steps, episode for episode
    best = max(record["rounds"], key=lambda row: (row["mean"], row["round"]))
    assert record["chosen"] == best["round"]
    kept = Agent.load(out, device="cpu").vae_path.resolve()
    assert kept == (out / best["folder"] / "vae" / "vae.pt").resolve()
    summary = json.loads((out / "stages.json").read_text())["train-controller"]["summary"]
    assert f"the run's agent is round {best['round']}'s" in summary
