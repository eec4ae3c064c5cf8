"""`pipeline --preset smoke` end to end, the Agent API on its run folder, and bad run folders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import worldmodels
from worldmodels.cli import main
from worldmodels.config import PRESETS, PipelineConfig, apply_overrides, from_dict, preset, to_dict
from worldmodels.controller.train import BEST
from worldmodels.pipeline import STAGES, run_pipeline


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_survives_its_config_file(name):
    config = PRESETS[name]
    for part in (
        config.collect,
        config.vae,
        config.mdrnn,
        config.controller,
        config.evaluate,
        config.iterate,
        config.refine,
    ):
        part.validate()
    if config.dream is not None:
        config.dream.validate()
        assert config.mdrnn.done_head, "a dream needs M's done head"
    assert from_dict(PipelineConfig, json.loads(json.dumps(to_dict(config)))) == config


def test_every_stage_ran_and_left_its_outputs(smoke_run):
    stages = json.loads((smoke_run / "stages.json").read_text())
    assert set(stages) == set(STAGES)
    for path in (
        "config.json",
        "episodes/manifest.json",
        "vae/vae.pt",
        "vae/recon.png",
        "series/manifest.json",
        "mdrnn/mdrnn.pt",
        "controller/best.npy",
        "controller/curve.png",
        "controller/log.csv",
        "eval.json",
        "report.md",
    ):
        assert (smoke_run / path).exists(), path
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["preset"] == "smoke" and config["collect"]["episodes"] == 4
    ev = json.loads((smoke_run / "eval.json").read_text())
    assert ev["episodes"] == 2 and ev["seeds"] == [0, 1] and ev["backend"] == "gymnasium"
    assert np.isclose(ev["mean"], np.mean(ev["returns"]))
    report = (smoke_run / "report.md").read_text()
    assert f"{ev['mean']:.1f} +- {ev['std']:.1f}" in report and "curve.png" in report
    assert "recon.png" in report and "dream_vs_real.png" in report


def test_best_npy_is_the_final_selections_choice(smoke_run):
    """The smoke preset re-evaluates its two mean-evals on two more selection tracks: best.npy
    is the evaluated mean with the best mean over its four selection tracks."""
    from worldmodels.controller.train import SELECTION_JSON
    from worldmodels.evolution.cmaes import STATE, safe_loads

    folder = smoke_run / "controller"
    record = json.loads((folder / SELECTION_JSON).read_text())
    rows = record["candidates"]
    assert len(rows) == 2 and all(r["episodes"] == 4 for r in rows)
    assert record["chosen"] == max(rows, key=lambda r: r["selection_mean"])["generation"]
    for r in rows:
        assert np.isclose(r["selection_mean"], (r["mean_eval"] + r["final_mean"]) / 2)
    state = safe_loads((folder / STATE).read_bytes())
    chosen = next(e for e in state.evaluated if e["generation"] == record["chosen"])
    np.testing.assert_array_equal(np.load(folder / BEST), chosen["params"])
    stages = json.loads((smoke_run / "stages.json").read_text())
    assert (
        f"final selection: the mean of generation {record['chosen']}"
        in (stages["train-controller"]["summary"])
    )


def test_the_data_never_holds_a_track_that_scores_or_selects_c(smoke_run):
    """V and M are trained on collected episodes: their seeds must not be the scoring seeds
    (nor C's selection seeds), or the score is measured on tracks the model has seen."""
    from worldmodels.data.store import EpisodeStore

    ev = json.loads((smoke_run / "eval.json").read_text())
    data = {episode.meta["seed"] for episode in EpisodeStore(smoke_run / "episodes")}
    assert data and not data & set(ev["seeds"])
    for name in PRESETS:
        c = preset(name)
        start = c.collect.seed
        collected = range(start, start + c.collect.episodes)
        scoring = range(c.evaluate.seed, c.evaluate.seed + c.evaluate.episodes)
        selection = c.controller.selection_seeds()
        for other in (scoring, selection):
            assert max(collected.start, other.start) >= min(collected.stop, other.stop), name


def test_a_second_run_skips_finished_stages(smoke_run, capsys):
    before = (smoke_run / "controller" / BEST).read_bytes()
    run_pipeline(preset("smoke"), smoke_run, preset_name="smoke", progress=False)
    out = capsys.readouterr().out
    assert out.count("done already") == len(STAGES)
    assert (smoke_run / "controller" / BEST).read_bytes() == before


def test_a_resumed_stage_records_its_time_over_every_run(smoke_run, tmp_path):
    import csv
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    stages_file = run / "stages.json"
    stages = json.loads(stages_file.read_text())
    for stage in ("train-controller", "evaluate", "report"):
        del stages[stage]  # as if the run had been killed in CMA-ES after its last generation
    stages_file.write_text(json.dumps(stages))
    with open(run / "controller" / "log.csv") as f:
        es_seconds = sum(float(row["seconds"]) for row in csv.DictReader(f))
    run_pipeline(preset("smoke"), run, preset_name="smoke", progress=False)
    again = json.loads(stages_file.read_text())["train-controller"]
    assert again["seconds"] >= es_seconds > 0 and not again["time_partial"]


def test_agent_loads_a_run_and_acts_on_raw_frames(smoke_run):
    agent = worldmodels.Agent.load(smoke_run, device="cpu")
    assert agent.spec.num_params == 867
    agent.reset(batch_size=3, seeds=[0, 1, 2])
    frames = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    actions = agent.act(frames)
    assert actions.shape == (3, 3) and actions.dtype == np.float32
    assert (actions[:, 0] >= -1).all() and (actions[:, 0] <= 1).all()
    assert (actions[:, 1:] >= 0).all() and (actions[:, 1:] <= 1).all()
    with pytest.raises(ValueError, match=r"expected frames \(3, 96, 96, 3\)"):
        agent.act(frames[:2])


def test_evaluate_command_writes_every_episode(smoke_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    video = tmp_path / "episode.gif"
    args = [
        "evaluate",
        str(smoke_run),
        "--episodes",
        "2",
        "--seed",
        "5",
        "--max-steps",
        "20",
        "--num-envs",
        "2",
        "--out",
        str(out),
        "--video",
        str(video),
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["seeds"] == [5, 6] and len(result["returns"]) == 2
    assert f"{result['mean']:.1f} +- {result['std']:.1f} over 2 episodes" in printed
    assert video.stat().st_size > 1000


def test_a_video_holds_the_whole_episode_and_a_bad_name_is_refused_first(
    smoke_run, tmp_path, capsys
):
    """--video writes every step (MP4) or every other one (GIF) of the episode, each frame the
    road beside the agent's view and V's reconstruction; a name it cannot write is refused
    before a single episode is played."""
    import imageio.v3 as iio

    def evaluate(video, out):
        args = ["evaluate", str(smoke_run), "--episodes", "1", "--max-steps", "20"]
        return main([*args, "--out", str(out), "--video", str(video), "--no-progress"])

    for name, frames in (("episode.mp4", 20), ("episode.gif", 10)):
        assert evaluate(tmp_path / name, tmp_path / "eval.json") == 0
        assert iio.imread(tmp_path / name).shape == (frames, 96 * 3, 96 * 3 + 2 * 64 * 4, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    capsys.readouterr()
    assert evaluate(tmp_path / "episode.avi", tmp_path / "refused.json") == 2
    assert ".gif or .mp4" in capsys.readouterr().err
    assert not (tmp_path / "refused.json").exists() and not (tmp_path / "episode.avi").exists()


def test_evaluation_returns_do_not_depend_on_env_groups(smoke_run):
    """Evaluation overlaps networks and environments as training does: same episodes."""
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent

    agent = Agent.load(smoke_run)
    kwargs = dict(episodes=3, seed=11, num_envs=3, backend="gymnasium", max_steps=40)
    synchronous = evaluate_agent(agent, progress=False, groups=1, **kwargs)
    overlapped = evaluate_agent(agent, progress=False, groups=2, **kwargs)
    np.testing.assert_allclose(overlapped.returns, synchronous.returns, atol=1e-3)


def test_a_different_preset_on_the_same_folder_is_refused(smoke_run, capsys):
    assert main(["pipeline", "--preset", "laptop", "--out", str(smoke_run)]) == 2
    err = capsys.readouterr().err
    assert "other settings of finished stages" in err and "collect.episodes" in err
    assert "--set collect.episodes=4 " in err  # how to resume it: the smoke preset's value


def test_a_setting_that_does_nothing_does_not_freeze_a_finished_run(smoke_run, tmp_path):
    """controller.refit_init refits a warm start; a run without one (round 1 of an iterated
    run, a one-round run) resumes whatever it says, as a run saved before the key existed
    must, while a setting that acts on a finished stage stays refused."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    config = json.loads((run / "config.json").read_text())
    assert config["controller"]["init"] is None
    config["controller"]["refit_init"] = not config["controller"]["refit_init"]
    (run / "config.json").write_text(json.dumps(config))
    stages = (run / "stages.json").read_text()
    assert main(["pipeline", "--preset", "smoke", "--out", str(run), "--no-progress"]) == 0
    assert (run / "stages.json").read_text() == stages  # nothing ran again
    args = ["pipeline", "--preset", "smoke", "--out", str(run), "--set", "controller.sigma0=0.5"]
    assert main(args) == 2


def test_set_changes_typed_settings_of_a_preset():
    config = apply_overrides(
        preset("laptop"),
        [
            "controller.rollouts=8",
            "controller.popsize=8",
            "collect.policy=random_weights",
            "controller.time_budget_s=none",
            "controller.sigma0=0.05",
            "controller.z_mode=mean",
            "vae.bf16=true",
        ],
    )
    c = config.controller
    assert (c.rollouts, c.popsize, c.time_budget_s, c.sigma0, c.z_mode) == (
        8,
        8,
        None,
        0.05,
        "mean",
    )
    assert config.collect.policy == "random_weights" and config.vae.bf16 is True
    assert preset("laptop").controller.rollouts == 2  # the preset itself is untouched


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("controller.rolouts=8", "unknown key 'rolouts'; controller keys: mode, popsize"),
        ("control.rollouts=8", "unknown section 'control'; choose one of collect, vae"),
        ("controller.rollouts=eight", "controller.rollouts=eight: expected int"),
        ("controller.rollouts=0", "controller: rollouts must be positive"),
        ("controller.z_mode=median", "unknown z_mode 'median'; choose one of sample, mean"),
        ("collect.policy=greedy", "unknown policy 'greedy'; choose one of brownian"),
        ("dream.temperature=2", "no 'dream' section"),
        ("controller.final_episodes=0", "final_episodes must be positive"),
        ("controller.rollouts", "expected SECTION.KEY=VALUE"),
        ("refine.popsize=1", "refine: popsize must be at least 2"),
        ("refine.final_top=0", "refine: final_top must be positive"),
        ("refine.time_budget_s=-1", "refine: time_budget_s must be >= 0"),
        ("controller.replay_hard=2", "controller: replay_hard must be in 0..rollouts - 1 (1)"),
    ],
)
def test_set_refuses_bad_settings_in_one_line_and_writes_nothing(
    tmp_path, capsys, assignment, message
):
    out = tmp_path / "run"
    args = ["pipeline", "--preset", "laptop", "--out", str(out), "--set", assignment]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_final_selection_needs_mean_evals_in_the_game():
    with pytest.raises(ValueError, match="chosen by dream.select_on_real"):
        apply_overrides(preset("doom-laptop"), ["controller.final_top=2"])
    with pytest.raises(ValueError, match="final_top chooses among the mean-evals"):
        apply_overrides(preset("smoke"), ["controller.eval_every=0"])
    with pytest.raises(ValueError, match="refine evolves C in the real game"):
        apply_overrides(preset("doom-laptop"), ["refine.time_budget_s=60"])
    with pytest.raises(ValueError, match="a dream run's C plays M's dreams, not tracks"):
        apply_overrides(preset("doom-laptop"), ["controller.replay_hard=1"])
    with pytest.raises(ValueError, match="refit_init: refits the warm start of C evolved in"):
        apply_overrides(preset("doom-laptop"), ["controller.mode=zh", "controller.refit_init=true"])
    with pytest.raises(
        ValueError, match=r"refit_init refits C on \[z\] or \[z, h\], not mode 'zch'"
    ):
        apply_overrides(preset("doom-laptop"), ["controller.refit_init=true"])


def test_a_refinement_is_checked_with_the_controller_settings_it_inherits():
    laptop_long = preset("laptop-long")  # refine: 32 x 4
    refined = apply_overrides(laptop_long, ["controller.replay_hard=1"])
    assert refined.refine.on(refined.controller).replay_hard == 1
    refitted = apply_overrides(laptop_long, ["controller.refit_init=true"])
    assert not refitted.refine.on(refitted.controller).refit_init  # from its own V and M
    with pytest.raises(ValueError, match=r"refine \(on the controller section\): replay_hard"):
        apply_overrides(laptop_long, ["controller.rollouts=8", "controller.replay_hard=5"])


def test_set_on_resume_changes_unfinished_stages_only(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    stages_file = run / "stages.json"
    stages = json.loads(stages_file.read_text())
    for stage in ("train-controller", "evaluate", "report"):
        del stages[stage]
    stages_file.write_text(json.dumps(stages))
    shutil.rmtree(run / "controller")
    base = ["pipeline", "--preset", "smoke", "--out", str(run), "--no-progress"]
    assert main([*base, "--set", "mdrnn.steps=30"]) == 2  # M is finished: frozen
    assert "mdrnn.steps" in capsys.readouterr().err
    assert main([*base, "--set", "controller.z_mode=mean", "--set", "evaluate.episodes=1"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["controller"]["z_mode"] == "mean" and saved["evaluate"]["episodes"] == 1
    assert "--set controller.z_mode=mean" in saved["preset"]
    assert json.loads((run / "controller" / "controller.json").read_text())["z_mode"] == "mean"
    assert json.loads((run / "eval.json").read_text())["episodes"] == 1


def test_mirror_trains_v_and_m_on_mirrored_data_and_is_frozen_once_encoded(
    smoke_run, tmp_path, capsys
):
    import shutil

    from worldmodels.data.store import EpisodeStore

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    stages_file = run / "stages.json"
    (run / "stages.json").write_text(
        json.dumps({"collect": json.loads(stages_file.read_text())["collect"]})
    )
    for folder in ("vae", "series", "mdrnn", "controller"):
        shutil.rmtree(run / folder)
    mirror = ["vae.mirror=true", "mdrnn.mirror=true"]
    config = apply_overrides(preset("smoke"), mirror)
    up_to_m = STAGES[STAGES.index("train-vae") : STAGES.index("train-mdrnn") + 1]
    run_pipeline(config, run, "smoke", progress=False, stages=up_to_m)
    assert json.loads((run / "vae" / "config.json").read_text())["mirror"] is True
    assert json.loads((run / "mdrnn" / "config.json").read_text())["mirror"] is True
    series = EpisodeStore(run / "series")
    assert series.manifest["identity"]["mirror"] is True and "mu_mirror" in series[0].keys
    # M's windows need the mirrored latents encode wrote: once encoded, mdrnn.mirror is frozen
    base = ["pipeline", "--preset", "smoke", "--out", str(run), "--no-progress"]
    assert main([*base, "--set", "vae.mirror=true"]) == 2
    err = capsys.readouterr().err
    assert "mdrnn.mirror;" in err and "(--set mdrnn.mirror=true)" in err


def test_a_folder_of_other_things_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["pipeline", "--out", str(tmp_path)]) == 2
    assert "not a pipeline run folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_missing_stage_outputs_are_named(smoke_run, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no trained controller found" in capsys.readouterr().err
    broken = tmp_path / "run"
    (broken / "controller").mkdir(parents=True)
    (broken / "controller" / "controller.json").write_text(
        (smoke_run / "controller" / "controller.json").read_text()
    )
    assert main(["evaluate", str(broken)]) == 2
    assert "vae.pt" in capsys.readouterr().err


def test_a_controller_file_of_the_wrong_length_is_named(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    np.save(run / "controller" / BEST, np.zeros(99))
    assert main(["evaluate", str(run), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "best.npy: expected a vector of 867" in err


def test_models_whose_sizes_disagree_are_refused(smoke_run, tmp_path, capsys):
    import shutil

    from worldmodels.memory.mdrnn import MDNRNN
    from worldmodels.memory.train import save_mdrnn

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    config = preset("smoke").mdrnn
    config.hidden_size = 64
    save_mdrnn(run / "mdrnn" / "mdrnn.pt", MDNRNN(hidden_size=64), config)
    assert main(["evaluate", str(run), "--episodes", "1"]) == 2
    assert "h=64" in capsys.readouterr().err


def test_a_terminated_evaluation_leaves_no_worker_and_keeps_the_old_result(smoke_run):
    import signal

    from shutdown import needs_proc, start, stop_and_check_nothing_is_left

    if needs_proc.mark.args[0]:
        pytest.skip(needs_proc.mark.kwargs["reason"])
    before = (smoke_run / "eval.json").read_bytes()
    args = ["evaluate", str(smoke_run), "--episodes", "8", "--num-envs", "2", "--workers", "2"]
    proc = start(*args, "--no-progress")
    code, err = stop_and_check_nothing_is_left(proc, signal.SIGTERM, workers=2)
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert (smoke_run / "eval.json").read_bytes() == before


ROUNDS_SETS = ["iterate.rounds=2", "iterate.vae_steps=10", "collect.agent_noise=0"]
ROUNDS_SETS += ["iterate.episodes=3"]  # round 1's; round 2 the collect section's 4
ROUNDS_SETS += ["controller.z_mode=mean", "iterate.warm_start=true", "iterate.keep_best_round=true"]
ROUNDS_SETS += ["controller.refit_init=true"]


def rounds_args(out) -> list[str]:
    args = ["pipeline", "--preset", "smoke", "--out", str(out), "--no-progress"]
    return args + [a for x in ROUNDS_SETS for a in ("--set", x)]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """A smoke run of the iterative procedure in two rounds, warm-started, keep_best_round;
    (its folder, its log)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("rounds") / "run"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(rounds_args(out)) == 0
    return out, log.getvalue()


def test_each_round_collects_with_the_agent_of_the_round_before(two_rounds, capsys):
    """iterate.rounds=2: round 1 is a whole run up to C in RUN/round1 (V for fewer steps), and
    RUN's data are round 1's C driving on the same tracks (noise 0 and C fed mu here, so
    they are exactly the episodes `evaluate` plays with round 1's agent on the same seeds).
    With warm_start, round 2's V, M and C start from round 1's."""
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent
    from worldmodels.controller.train import SELECTION_JSON
    from worldmodels.data.store import EpisodeStore, load_manifest
    from worldmodels.utils.io import file_digest_of

    out, log = two_rounds
    args = rounds_args(out)
    assert "[round 1] [train-controller] starting" in log
    round1 = out / "round1"
    assert set(json.loads((round1 / "stages.json").read_text())) == set(STAGES[1:6])
    assert json.loads((round1 / "config.json").read_text())["vae"]["max_steps"] == 10
    assert json.loads((out / "config.json").read_text())["vae"]["max_steps"] == 20
    started_from = {
        "vae/config.json": round1 / "vae" / "vae.pt",
        "mdrnn/config.json": round1 / "mdrnn" / "mdrnn.pt",
        "controller/config.json": round1 / "controller" / "best.npy",
    }
    for saved, given in started_from.items():
        assert json.loads((out / saved).read_text())["init"] == str(given), saved
        assert json.loads((round1 / saved).read_text())["init"] is None, saved
    # C's warm start refitted onto round 2's V and M first: CMA-ES and the final selection
    # (generation 0) start from that, round 1 (from zeros) has nothing to refit
    refit = json.loads((out / "controller" / "refit.json").read_text())
    assert refit["init"] == str(round1 / "controller" / BEST) and min(refit["r2"]) > 0.9
    selection = json.loads((out / "controller" / SELECTION_JSON).read_text())
    assert selection["init"] == file_digest_of([out / "controller" / "init.npy"])
    assert not (round1 / "controller" / "refit.json").exists()
    first = load_manifest(round1 / "episodes")["identity"]
    final = load_manifest(out / "episodes")["identity"]
    assert first["policy"] == "brownian" and "agent" not in first
    assert final["policy"] == "agent" and final["agent"] == str(round1.resolve())
    assert final["seed"] == first["seed"]  # the same tracks, driven by round 1's agent
    store = EpisodeStore(out / "episodes")
    seeds = [ep.meta["seed"] for ep in store]  # and one more: round 2 collects 4, round 1 3
    assert seeds[:3] == [ep.meta["seed"] for ep in EpisodeStore(round1 / "episodes")]
    assert len(seeds) == 4 and seeds[3] not in seeds[:3]
    played = evaluate_agent(
        Agent.load(round1, device="cpu"),
        episodes=len(store),
        seed=final["seed"],
        num_envs=2,
        backend=final["backend"],
        max_steps=final["max_steps"],
        progress=False,
    )
    np.testing.assert_allclose([ep.meta["return"] for ep in store], played.returns, atol=1e-3)
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == set(STAGES) and "round 1 (round1/)" in stages["earlier-rounds"]["summary"]
    assert main(args) == 0  # run again: nothing left to do
    assert capsys.readouterr().out.count("done already") == len(STAGES)


def test_round_1s_steps_and_time_are_its_own_and_later_rounds_take_the_sections(tmp_path):
    """iterate.rounds=3, warm: round 1 (cold) trains V for iterate.vae_steps and C for
    iterate.controller_budget_s; rounds 2 and 3 refine the round before's V, M and C with the
    sections' steps and time, and collect with its agent."""
    from worldmodels.pipeline import round_config

    config = preset("laptop")
    sets = ["iterate.rounds=3", "iterate.episodes=50", "iterate.mdrnn_steps=7"]
    config = apply_overrides(config, sets)
    rounds = [round_config(config, k, tmp_path) for k in (1, 2, 3)]
    assert (rounds[0].vae.max_steps, rounds[0].controller.time_budget_s) == (2400, 3600)
    assert (rounds[0].collect.episodes, rounds[0].mdrnn.steps) == (50, 7)
    assert [(r.collect.episodes, r.mdrnn.steps) for r in rounds[1:]] == [(120, 600)] * 2
    assert rounds[0].collect.policy == "random_weights" and rounds[0].vae.init is None
    for k, later in ((2, rounds[1]), (3, rounds[2])):
        assert (later.vae.max_steps, later.controller.time_budget_s) == (800, 25 * 60)
        before = tmp_path / f"round{k - 1}"
        assert later.collect.policy == "agent" and later.collect.agent == str(before)
        assert later.vae.init == str(before / "vae" / "vae.pt")
        assert later.controller.init == str(before / "controller" / BEST)
    assert rounds[2].iterate == config.iterate and rounds[1].iterate.rounds == 1


def test_laptop_long_round_1_is_the_laptop_runs(tmp_path):
    """laptop-long grows a finished laptop run: its round 1 (360 random-weights episodes, V 2,400
    steps, M 600, CMA-ES 60 min) is laptop's, and only the later rounds differ."""
    from worldmodels.pipeline import round_config

    laptop, long = preset("laptop"), preset("laptop-long")
    round1 = round_config(laptop, 1, tmp_path)
    assert round1 == round_config(long, 1, tmp_path)
    assert (round1.collect.episodes, round1.collect.policy) == (360, "random_weights")
    assert (round1.vae.max_steps, round1.mdrnn.steps) == (2400, 600)
    assert round1.controller.time_budget_s == 60 * 60
    laptop2, long2 = (round_config(c, 2, tmp_path) for c in (laptop, long))
    assert (laptop2.collect.episodes, long2.collect.episodes) == (120, 360)


def test_resumed_earlier_rounds_record_the_rounds_own_time(two_rounds, tmp_path):
    """Killed after round 1 finished but before its stage was recorded, the resumed run records
    round 1's stage times (each kept over its own resumes), not the seconds the resume took."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_rounds[0], out)
    stages_file = out / "stages.json"
    stages = json.loads(stages_file.read_text())
    del stages["earlier-rounds"]
    stages_file.write_text(json.dumps(stages))
    round1 = json.loads((out / "round1" / "stages.json").read_text()).values()
    assert main(rounds_args(out)) == 0
    again = json.loads(stages_file.read_text())["earlier-rounds"]
    assert again["seconds"] == pytest.approx(sum(stage["seconds"] for stage in round1))
    assert again["seconds"] > 1 and not again["time_partial"]


def test_more_rounds_on_a_finished_run_go_on_from_its_last_round(two_rounds, tmp_path):
    """iterate.rounds=3 on a finished 2-round run: its round 2 (outputs, stage record) moves to
    RUN/round2 as a 3-round run's round 2, with its own agent and nothing trained again; round
    3 collects with round 2's agent and refines its V. A change to a finished stage of that
    round is refused with nothing moved; a move stopped midway is finished by the next run."""
    import shutil

    from worldmodels.data.store import load_manifest
    from worldmodels.pipeline import read_run_config, round_config

    out = tmp_path / "run"
    shutil.copytree(two_rounds[0], out)
    before = sorted(p.name for p in out.iterdir())
    best = (out / "controller" / BEST).read_bytes()
    three = [*rounds_args(out), "--set", "iterate.rounds=3"]
    assert main([*three, "--set", "vae.max_steps=30"]) == 2  # round 2's V
    assert main([*three, "--set", "iterate.vae_steps=11"]) == 2  # round 1's V
    assert sorted(p.name for p in out.iterdir()) == before
    (out / "round2.adding").mkdir()  # a move stopped after V's folder
    (out / "vae").rename(out / "round2.adding" / "vae")
    assert main(three) == 0
    round2 = out / "round2"
    assert (round2 / "controller" / BEST).read_bytes() == best
    controller = json.loads((round2 / "controller" / "controller.json").read_text())
    assert "agent_from" not in controller
    config, _ = read_run_config(out)
    saved, name = read_run_config(round2)
    assert saved == round_config(config, 2, out) and name == "round 2 of 3"
    assert set(json.loads((round2 / "stages.json").read_text())) == set(STAGES[1:6])
    assert (round2 / "eval.json").exists() and not (out / "round2.adding").exists()
    identity = load_manifest(out / "episodes")["identity"]
    assert identity["policy"] == "agent" and identity["agent"] == str(round2.resolve())
    vae = json.loads((out / "vae" / "config.json").read_text())
    assert vae["init"] == str(round2 / "vae" / "vae.pt")
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == set(STAGES) and "round 2 (round2/)" in stages["earlier-rounds"]["summary"]


def test_more_rounds_are_refused_where_round_1_would_have_trained_otherwise(
    smoke_run, tmp_path, capsys
):
    """A one-round run made with iterate.vae_steps set (unused with one round) cannot become
    round 1 of two: round 1 of several trains V for vae_steps, and this V had the vae
    section's steps. Nothing is moved."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(smoke_run, out)
    saved = json.loads((out / "config.json").read_text())
    saved["iterate"]["vae_steps"] = 10
    (out / "config.json").write_text(json.dumps(saved))
    before = sorted(p.name for p in out.iterdir())
    args = ["pipeline", "--preset", "smoke", "--out", str(out), "--set", "iterate.vae_steps=10"]
    assert main([*args, "--set", "iterate.rounds=2"]) == 2
    assert "round 1's finished stages (vae.max_steps=20)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_round_1_settings_compare_by_what_round_1_ran(two_rounds, tmp_path, capsys):
    """A run whose round 1 took the collect section's 3 episodes (iterate.episodes none) goes
    on with iterate.episodes=3 and 4 episodes for round 2 (how laptop-long grows a laptop
    run's round 2), and is refused where round 1 would have had 4, with the setting that
    resumes it."""
    import shutil

    from worldmodels.config import apply_overrides, preset
    from worldmodels.pipeline import prepare_run

    out = tmp_path / "run"
    shutil.copytree(two_rounds[0], out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["iterate"]["episodes"] == 3 and saved["collect"]["episodes"] == 4
    saved["iterate"]["episodes"], saved["collect"]["episodes"] = None, 3
    (out / "config.json").write_text(json.dumps(saved))
    stages = json.loads((out / "stages.json").read_text())
    (out / "stages.json").write_text(json.dumps({"earlier-rounds": stages["earlier-rounds"]}))

    grown = apply_overrides(preset("smoke"), ROUNDS_SETS)  # iterate.episodes=3, collect 4
    prepare_run(out, grown, "smoke")
    assert json.loads((out / "config.json").read_text())["collect"]["episodes"] == 4

    (out / "config.json").write_text(json.dumps(saved))
    args = [*rounds_args(out), "--set", "iterate.episodes=none"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "finished stages" in err and "--set iterate.episodes=3" in err
    assert json.loads((out / "config.json").read_text()) == saved


def drive(spec, gas: bool) -> np.ndarray:
    """A CarRacing C that ignores its input: straight on at full gas, or full brake."""
    params = np.zeros(spec.num_params, dtype=np.float32)
    params[-3:] = [0.0, 5.0, -5.0] if gas else [0.0, -5.0, 5.0]  # the bias: steer, gas, brake
    return params


def test_keep_best_round_makes_the_better_rounds_agent_the_runs(two_rounds, tmp_path, capsys):
    """Every round's agent plays the same fresh selection tracks (no track that trains, selects
    within a round or scores); the best mean is the run's agent: Agent.load and evaluate give
    round 1's V, M and C when round 1 drives and round 2 brakes, round 2's own when it is the
    other way round."""
    import shutil

    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent
    from worldmodels.controller.train import save_params
    from worldmodels.pipeline import ROUNDS_JSON, RunPaths, keep_best_round, read_run_config
    from worldmodels.play.session import load_play_models

    run, log = two_rounds
    assert "rounds on 2 fresh selection tracks: round 1 " in log
    out = tmp_path / "run"
    shutil.copytree(run, out)
    config, _ = read_run_config(out)
    paths = RunPaths(out)
    spec = Agent.load(out, device="cpu").spec
    for round1_drives in (True, False):
        save_params(out / "round1" / "controller" / BEST, drive(spec, gas=round1_drives))
        save_params(paths.best_params, drive(spec, gas=not round1_drives))
        line = keep_best_round(config, paths, False, None)
        record = json.loads((paths.controller / ROUNDS_JSON).read_text())
        chosen = 1 if round1_drives else 2
        assert record["chosen"] == chosen and f"the run's agent is round {chosen}'s" in line
        means = [row["mean"] for row in record["rounds"]]
        assert means[chosen - 1] > means[2 - chosen] + 10, means  # a braking car earns no tiles
        seeds = list(range(record["seeds"][0], record["seeds"][1] + 1))
        selection = config.controller.selection_seeds()
        assert seeds[0] == selection.stop and len(seeds) == config.controller.final_episodes
        assert not set(seeds) & set(range(config.evaluate.seed, config.evaluate.seed + 100))
        agent = Agent.load(out, device="cpu")
        source = out / "round1" if round1_drives else out
        assert agent.vae_path.resolve() == (source / "vae" / "vae.pt").resolve()
        assert np.array_equal(agent.params, np.load(source / "controller" / BEST))
        assert (
            Agent.load(out, device="cpu", which="latest").vae_path.resolve()
            == (out / "vae" / "vae.pt").resolve()
        )  # latest is always the last round's CMA-ES mean
        played = evaluate_agent(
            agent, 2, seeds[0], num_envs=2, backend=config.controller.backend, max_steps=50
        )
        kept = record["rounds"][chosen - 1]["returns"]
        np.testing.assert_allclose(played.returns, kept, atol=1e-3)
        assert load_play_models(out).run_dir == source  # the page dreams in the kept round
        capsys.readouterr()
        assert main(["evaluate", str(out), "--episodes", "1", "--max-steps", "20"]) == 0
        named = f"the run's agent is {out / 'round1'}'s" in capsys.readouterr().out
        assert named == round1_drives


REFINE_SETS = ["refine.time_budget_s=60", "refine.popsize=4", "refine.rollouts=1"]
REFINE_SETS += ["refine.eval_every=1", "refine.eval_episodes=2", "refine.final_top=2"]
REFINE_SETS += ["refine.final_episodes=2"]


def with_refine(args: list[str]) -> list[str]:
    return args + [a for x in REFINE_SETS for a in ("--set", x)]


def test_a_warm_start_is_kept_unless_a_mean_beats_it_on_the_final_tracks(smoke_run, tmp_path):
    """The final selection of a warm-started CMA-ES (controller.init) replays the start, as
    generation 0, on every selection track beside the best means: a driving start is kept
    against a braking mean, a braking start gives way to a driving one, unless the gain must
    pass a margin (init_margin) it cannot."""
    from worldmodels.agent import Agent
    from worldmodels.config import ControllerConfig
    from worldmodels.controller.rollout import RolloutEngine
    from worldmodels.controller.train import final_selection, save_params
    from worldmodels.envs import make_vec_env
    from worldmodels.evolution.cmaes import ESSettings, new_state

    agent = Agent.load(smoke_run, device="cpu")
    spec = agent.spec
    with make_vec_env(backend="gymnasium", num_envs=3, max_steps=50, workers=0) as env:
        engine = RolloutEngine(agent.policy, env)
        for start_drives in (True, False):
            out = tmp_path / f"start-drives-{start_drives}"
            out.mkdir()
            config = ControllerConfig(
                eval_episodes=2, final_top=2, final_episodes=3, init=str(out / "start.npy")
            )
            tracks = list(config.selection_seeds())
            start, other = drive(spec, gas=start_drives), drive(spec, gas=not start_drives)
            save_params(out / "start.npy", start)

            def returns(params, seeds):
                return engine.run(params[None], [(0, s) for s in seeds]).returns

            state = new_state(ESSettings(num_params=spec.num_params, popsize=4))
            state.evaluated.append(
                {"generation": 10, "params": other, "returns": returns(other, tracks[:2])}
            )
            record = final_selection(state, engine, config, out, spec)
            rows = {r["generation"]: r for r in record["candidates"]}
            assert set(rows) == {0, 10} and all(r["episodes"] == 5 for r in rows.values())
            for generation, params in ((0, start), (10, other)):
                mean = returns(params, tracks).mean()
                assert rows[generation]["selection_mean"] == pytest.approx(mean, abs=1e-3)
            assert abs(rows[0]["selection_mean"] - rows[10]["selection_mean"]) > 5
            assert record["chosen"] == (0 if start_drives else 10)
            np.testing.assert_array_equal(np.load(out / BEST), drive(spec, gas=True))
        # a margin no gain passes keeps the braking start: decided again from the kept
        # returns, nothing replayed (no engine)
        strict = dataclasses.replace(config, init_margin=1e6)
        assert final_selection(state, None, strict, out, spec)["chosen"] == 0
        np.testing.assert_array_equal(np.load(out / BEST), start)


def force_refine_choice(run, chosen: int) -> None:
    """The refinement's final selection as if ``chosen`` had played 1,000 better than any
    candidate on every track (so that it wins by any margin); its stage and the ones after it
    unfinished, so the next run makes the choice again from the kept returns."""
    record_file = run / "refine" / "selection.json"
    record = json.loads(record_file.read_text())
    top = max(max(r["returns"]) for r in record["candidates"]) + 1000
    row = next(r for r in record["candidates"] if r["generation"] == chosen)
    row["returns"], row["selection_mean"] = [top] * len(row["returns"]), top
    record_file.write_text(json.dumps(record))
    stages = json.loads((run / "stages.json").read_text())
    for stage in ("refine-controller", "evaluate", "report"):
        stages.pop(stage, None)
    (run / "stages.json").write_text(json.dumps(stages))


def test_refine_on_a_finished_run_and_the_agent_it_keeps(smoke_run, tmp_path, capsys):
    """refine.time_budget_s > 0 on a finished run: a second CMA-ES starts from the run's
    best.npy (its own training tracks, the refine section's population) in RUN/refine, and
    the run is scored again. The refined agent is the run's (Agent.load, evaluate, play)
    only where the final selection chose it over the start; a rerun starts from the same
    agent, not from the refined one it made the run's."""
    import shutil

    from worldmodels.agent import Agent
    from worldmodels.config import ControllerConfig, load_config
    from worldmodels.pipeline import REFINE_SEED
    from worldmodels.play.session import load_play_models

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    start = np.load(run / "controller" / BEST)
    eval_before = (run / "eval.json").stat().st_mtime_ns
    args = with_refine(["pipeline", "--preset", "smoke", "--out", str(run), "--no-progress"])
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "[refine-controller] starting" in log and "[evaluate] starting" in log
    assert "[report] starting" in log and (run / "eval.json").stat().st_mtime_ns != eval_before
    assert set(json.loads((run / "stages.json").read_text())) == set(STAGES)
    settings = load_config(ControllerConfig, run / "refine" / "config.json")
    assert settings.init == str(run / "controller" / BEST)
    assert settings.seed == preset("smoke").controller.seed + REFINE_SEED
    assert (settings.popsize, settings.rollouts, settings.eval_episodes) == (4, 1, 2)
    assert settings.time_budget_s == 60 and settings.early_stop == 20  # the rest: controller's
    record = json.loads((run / "refine" / "selection.json").read_text())
    generations = [r["generation"] for r in record["candidates"]]
    assert 0 in generations and len(generations) == 3
    assert "Controller training" in (run / "report.md").read_text()
    assert "refine/curve.png" in (run / "report.md").read_text()
    refined = next(g for g in generations if g)
    for chosen in (refined, 0, refined):
        force_refine_choice(run, chosen)
        assert main(args) == 0
        line = json.loads((run / "stages.json").read_text())["refine-controller"]["summary"]
        info = json.loads((run / "controller" / "controller.json").read_text())
        agent = Agent.load(run, device="cpu")
        assert agent.vae_path.resolve() == (run / "vae" / "vae.pt").resolve()
        play = load_play_models(run)
        assert play.run_dir == run
        if chosen:
            assert info["agent_from"] == "refine" and "the refined agent is the run's" in line
            kept = np.load(run / "refine" / BEST)
            assert not np.array_equal(kept, start)
        else:
            assert "agent_from" not in info and "the agent it started from" in line
            kept = start
        np.testing.assert_array_equal(agent.params, kept)
        np.testing.assert_array_equal(play.params, kept)
        np.testing.assert_array_equal(np.load(run / "controller" / BEST), start)
        assert load_config(ControllerConfig, run / "refine" / "config.json").init == str(
            run / "controller" / BEST
        )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "1", "--max-steps", "20"]) == 0
    assert f"the run's agent is {run / 'refine'}'s" in capsys.readouterr().out
    # another refine.init_margin on the finished refinement: the choice is made again from the
    # kept returns (no generation played again) and the run scored again. The refined mean's
    # gain over the start made small and steady: +1, +2 on alternate final tracks
    record_file = run / "refine" / "selection.json"
    record = json.loads(record_file.read_text())
    rows = {r["generation"]: r for r in record["candidates"]}
    rows[refined]["returns"] = [r + 1 + i % 2 for i, r in enumerate(rows[0]["returns"])]
    record_file.write_text(json.dumps(record))
    log = (run / "refine" / "log.csv").read_text()
    for margin, kept in (("100", start), ("0", np.load(run / "refine" / BEST))):
        eval_before = (run / "eval.json").stat().st_mtime_ns
        assert main(args + ["--set", f"refine.init_margin={margin}"]) == 0
        record = json.loads(record_file.read_text())
        assert record["margin"] == float(margin)
        assert record["gain_over_start"] == pytest.approx(1.5)
        np.testing.assert_array_equal(Agent.load(run, device="cpu").params, kept)
        assert (run / "eval.json").stat().st_mtime_ns != eval_before
        assert (run / "refine" / "log.csv").read_text() == log


def test_a_finished_refinement_given_more_time_goes_on_where_it_stopped(
    smoke_run, tmp_path, capsys
):
    """A larger refine.time_budget_s on a finished refinement continues its CMA-ES from the
    checkpoint (its generations so far unchanged), selects again over every mean and scores
    the run again; a smaller one is refused like any finished stage's setting."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    args = with_refine(["pipeline", "--preset", "smoke", "--out", str(run), "--no-progress"])
    short = args + ["--set", "refine.time_budget_s=0.01"]  # one generation, then time is up
    assert main(short) == 0
    log_file = run / "refine" / "log.csv"
    first = log_file.read_text().splitlines()
    assert len(first) == 2  # the header and generation 1
    eval_before = (run / "eval.json").stat().st_mtime_ns
    capsys.readouterr()

    assert main(args) == 0  # refine.time_budget_s=60: up to the smoke preset's 2 generations
    log = capsys.readouterr().out
    assert "[refine-controller] starting" in log and "[evaluate] starting" in log
    assert "[train-controller] done already" in log
    rows = log_file.read_text().splitlines()
    assert rows[:2] == first and len(rows) == 3
    record = json.loads((run / "refine" / "selection.json").read_text())
    assert sorted(r["generation"] for r in record["candidates"]) == [0, 1, 2]
    assert (run / "eval.json").stat().st_mtime_ns != eval_before
    assert json.loads((run / "config.json").read_text())["refine"]["time_budget_s"] == 60
    assert set(json.loads((run / "stages.json").read_text())) == set(STAGES)

    config_before = (run / "config.json").read_text()
    assert main(short) == 2
    assert "refine.time_budget_s" in capsys.readouterr().err
    assert (run / "config.json").read_text() == config_before


def test_refine_starts_from_the_round_the_run_kept(two_rounds, tmp_path):
    """An iterated run that kept round 1's agent refines round 1's C on round 1's V and M, and
    the refined agent plays (and dreams, on the play page) with them."""
    import shutil

    from worldmodels.agent import Agent
    from worldmodels.controller.train import save_params
    from worldmodels.pipeline import RunPaths, keep_best_round, read_run_config
    from worldmodels.play.session import load_play_models

    out = tmp_path / "run"
    shutil.copytree(two_rounds[0], out)
    config, _ = read_run_config(out)
    paths = RunPaths(out)
    spec = Agent.load(out, device="cpu").spec
    save_params(out / "round1" / "controller" / BEST, drive(spec, gas=True))
    save_params(paths.best_params, drive(spec, gas=False))
    assert "the run's agent is round 1's" in keep_best_round(config, paths, False, None)
    assert main(with_refine(rounds_args(out))) == 0
    info = json.loads((out / "refine" / "controller.json").read_text())
    assert info["vae"] == "round1/vae/vae.pt" and info["mdrnn"] == "round1/mdrnn/mdrnn.pt"
    settings = json.loads((out / "refine" / "config.json").read_text())
    assert settings["init"] == str(out / "round1" / "controller" / BEST)
    record = json.loads((out / "refine" / "selection.json").read_text())
    force_refine_choice(out, next(r["generation"] for r in record["candidates"] if r["generation"]))
    assert main(with_refine(rounds_args(out))) == 0
    assert json.loads((out / "refine" / "config.json").read_text())["init"] == settings["init"]
    agent = Agent.load(out, device="cpu")
    assert agent.vae_path.resolve() == (out / "round1" / "vae" / "vae.pt").resolve()
    np.testing.assert_array_equal(agent.params, np.load(out / "refine" / BEST))
    play = load_play_models(out)
    assert play.run_dir.resolve() == (out / "round1").resolve()
    np.testing.assert_array_equal(play.params, agent.params)


def test_a_moved_run_of_three_rounds_resumes_where_it_is_now(two_rounds, tmp_path):
    """Round 2's saved settings hold paths into the run (round 1's agent, V, M and C), and the
    stores and V's checkpoint name the agent that collected: a run stopped in round 2's CMA-ES
    (here: the record of what came after it lost) and then moved goes on where it is now."""
    import shutil

    from worldmodels.data.store import EpisodeStore, load_manifest
    from worldmodels.pipeline import read_run_config

    first = tmp_path / "first"
    shutil.copytree(two_rounds[0], first)
    assert main([*rounds_args(first), "--set", "iterate.rounds=3"]) == 0
    episodes = len(EpisodeStore(first / "episodes"))
    round2 = json.loads((first / "round2" / "stages.json").read_text())
    round2.pop("train-controller")
    (first / "round2" / "stages.json").write_text(json.dumps(round2))
    (first / "stages.json").write_text("{}")
    out = tmp_path / "moved" / "run"
    out.parent.mkdir()
    first.rename(out)
    assert main([*rounds_args(out), "--set", "iterate.rounds=3"]) == 0
    saved, _ = read_run_config(out / "round2")
    assert saved.collect.agent == str(out / "round1")
    assert saved.vae.init == str(out / "round1" / "vae" / "vae.pt")
    assert len(EpisodeStore(out / "episodes")) == episodes  # nothing collected again
    identity = load_manifest(out / "episodes")["identity"]
    assert identity["agent"] == str((out / "round2").resolve())
    assert set(json.loads((out / "stages.json").read_text())) == set(STAGES)
