"""The whole method in one call: collect -> V -> encode -> M -> C -> evaluate -> report.

With ``iterate.rounds`` > 1 (the paper's iterative procedure), earlier rounds, each a whole
run up to C in ``RUN/round1``, ``RUN/round2``, ..., come first, and each round's data is
collected by the agent of the round before it.

With a ``dream`` section in the config (the ``doom`` presets), C is trained inside M's dream
(:func:`worldmodels.dream.train.train_in_dream`) and evaluated in the real game.

With ``refine.time_budget_s`` > 0, a second CMA-ES refines the run's agent in ``RUN/refine``
(a deviation); the refined agent becomes the run's only where it beats the one it started from.

A run folder holds one subfolder per stage and ``stages.json``, which records each finished
stage; running the pipeline again skips finished stages and resumes the unfinished one from
its own checkpoint. The run's config (from a named preset) is saved as ``config.json``; a
second run on the same folder must use the same config.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldmodels.config import (
    DREAM_REFINE,
    STAGES,
    IterateConfig,
    PipelineConfig,
    RefineConfig,
    assignments,
    config_differences,
    from_dict,
    to_dict,
)
from worldmodels.utils.io import atomic_write_json, read_json


@dataclass
class RunPaths:
    root: Path

    @property
    def episodes(self) -> Path:
        return self.root / "episodes"

    @property
    def vae_dir(self) -> Path:
        return self.root / "vae"

    @property
    def vae(self) -> Path:
        return self.vae_dir / "vae.pt"

    @property
    def series(self) -> Path:
        return self.root / "series"

    @property
    def mdrnn_dir(self) -> Path:
        return self.root / "mdrnn"

    @property
    def mdrnn(self) -> Path:
        return self.mdrnn_dir / "mdrnn.pt"

    @property
    def controller(self) -> Path:
        return self.root / "controller"

    @property
    def best_params(self) -> Path:
        from worldmodels.controller.train import BEST

        return self.controller / BEST

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"


# the stage each config section drives: a finished stage's settings are frozen on resume
SECTION_STAGE = {
    "iterate": "earlier-rounds",
    "collect": "collect",
    "vae": "train-vae",
    "mdrnn": "train-mdrnn",
    "controller": "train-controller",
    "dream": "train-controller",
    "refine": "refine-controller",
    "evaluate": "evaluate",
}


def prepare_run(
    out: str | Path, config: PipelineConfig, preset_name: str, run_root: Path | None = None
) -> RunPaths:
    """Create the run folder, or resume one: settings of unfinished stages may change (saved
    in config.json), settings of finished stages may not (ValueError naming them), but for
    more rounds, and a longer refinement or another margin for its final selection.
    ``run_root``: the run that ``out``, an earlier round's folder, belongs to."""
    paths = RunPaths(Path(out))
    config_file = paths.root / "config.json"
    if paths.root.exists() and not paths.root.is_dir():
        raise NotADirectoryError(f"{paths.root}: exists and is not a folder")
    if config_file.exists():
        saved_config, saved_preset = read_run_config(paths.root)
        more_rounds = config.iterate.rounds > saved_config.iterate.rounds
        if saved_config.iterate.rounds > 1 and config.iterate.rounds > 1:
            saved_config = with_round1_sizes(saved_config)
            changed = setting_changes(saved_config, with_round1_sizes(config))
        else:
            changed = setting_changes(saved_config, config)
        finished = finished_stages(paths)
        frozen = frozen_keys(changed, finished)
        if more_rounds:  # allowed: the run's own round becomes an earlier one
            frozen = [key for key in frozen if key != "iterate.rounds"]
        redo = refinement_changes(saved_config, config, finished)
        frozen = [key for key in frozen if key not in redo]
        if frozen:
            same = " ".join(f"--set {a}" for a in assignments(saved_config, frozen))
            raise ValueError(
                f"{paths.root} was made with other settings of finished stages (preset "
                f"{saved_preset!r}): {', '.join(frozen)}; choose another --out, or resume "
                f"with the same settings ({same})"
            )
        if more_rounds:
            make_last_round_an_earlier_one(paths, saved_config, config)
        forget_stages(paths, stages_to_rerun(changed, finished, bool(redo)))
        preset_name = saved_preset if not changed else preset_name
    elif paths.root.is_dir() and any(paths.root.iterdir()):
        raise ValueError(f"{paths.root}: not empty and not a pipeline run folder; nothing written")
    paths.root.mkdir(parents=True, exist_ok=True)
    write_run_config(paths.root, config, preset_name, run_root)
    return paths


def write_run_config(
    folder: Path, config: PipelineConfig, preset: str, run_root: Path | None = None
) -> None:
    """``folder/config.json``; an earlier round's (``run_root``: the run it belongs to, the
    folder above it) keeps that, so that the paths into the run that its settings hold can
    follow the run where it is moved (:func:`read_run_config`)."""
    where = {} if run_root is None else {"run_root": str(run_root)}
    atomic_write_json(
        folder / "config.json",
        {"type": "PipelineConfig", "preset": preset, **where, **to_dict(config)},
    )


ROUND_FOLDER = re.compile(r"round\d+")  # an earlier round's folder in a run folder
ROUND_STAGES = STAGES[1 : STAGES.index("train-controller") + 1]  # what an earlier round runs


def make_last_round_an_earlier_one(
    paths: RunPaths, saved: PipelineConfig, config: PipelineConfig
) -> None:
    """More rounds for a run (``config`` has more than ``saved``): the run's own round, its
    outputs and its record of finished stages, becomes round ``saved.iterate.rounds`` of
    ``config`` in its own folder, with its own agent (an ``agent_from`` is dropped), and the
    run goes on from there. Refused (ValueError, nothing moved) where that round's finished
    stages would have been trained with other settings under ``config``. A move that was
    stopped is finished by the next call."""
    k = saved.iterate.rounds
    target, staging = paths.root / f"round{k}", paths.root / f"round{k}.adding"
    if target.is_dir() and not staging.exists():  # moved; stopped before the record was reset
        atomic_write_json(paths.root / "stages.json", {})
        return
    finished = {s: v for s, v in finished_stages(paths).items() if s in ROUND_STAGES}
    for j in range(1, k + 1):  # every round's finished stages keep their settings
        was = dataclasses.replace(round_config(saved, j, paths.root), iterate=IterateConfig())
        now = round_config(config, j, paths.root)
        done = finished if j == k else finished_stages(RunPaths(paths.root / f"round{j}"))
        frozen = frozen_keys(setting_changes(was, now), done)
        if frozen:
            raise ValueError(
                f"{paths.root}: {config.iterate.rounds} rounds would change settings of round "
                f"{j}'s finished stages ({', '.join(assignments(was, frozen))}); nothing moved"
            )
    staging.mkdir(exist_ok=True)
    preset = f"round {k} of {config.iterate.rounds}"
    write_run_config(staging, round_config(config, k, paths.root), preset, paths.root)
    atomic_write_json(staging / "stages.json", finished)
    keep = {"config.json", "stages.json", staging.name}
    for item in sorted(paths.root.iterdir()):
        if item.name not in keep and not ROUND_FOLDER.fullmatch(item.name):
            item.rename(staging / item.name)
    if (staging / "controller" / "controller.json").exists():
        from worldmodels.controller.train import set_agent_from

        set_agent_from(staging / "controller", None)
    staging.rename(target)
    atomic_write_json(paths.root / "stages.json", {})


def read_run_config(root: Path) -> tuple[PipelineConfig, str | None]:
    """A run folder's saved settings and the name of the preset they came from. An earlier
    round's folder keeps the run it belongs to (``run_root``): the paths into the run that its
    settings hold (the round before's agent, V, M and C) are read where the run is now, the
    folder above it."""
    saved = read_json(root / "config.json", "run config")
    saved.pop("type", None)
    preset_name = saved.pop("preset", None)
    run_root = saved.pop("run_root", None)
    if run_root is not None:
        saved = moved_paths(saved, run_root, Path(root).parent)
    return from_dict(PipelineConfig, saved), preset_name


def moved_paths(value: Any, old: str, new: Path) -> Any:
    """A saved config (``to_dict``) with each path under the folder ``old`` moved under ``new``
    (a run moved, or resumed by another relative path, reads its own files)."""
    if isinstance(value, dict):
        return {key: moved_paths(item, old, new) for key, item in value.items()}
    if not isinstance(value, str) or old in (".", ""):
        return value
    if value == old:
        return str(new)
    if value.startswith(old.rstrip(os.sep) + os.sep):
        return str(new / value[len(old.rstrip(os.sep)) + 1 :])
    return value


# settings a stage other than their section's reads: encode writes the mirrored latents
KEY_STAGE = {"mdrnn.mirror": "encode"}


def stage_of(key: str) -> str:
    """The stage a dotted setting (``controller.popsize``) belongs to."""
    return KEY_STAGE.get(key) or SECTION_STAGE[key.split(".")[0]]


def setting_changes(old: PipelineConfig, new: PipelineConfig) -> list[str]:
    """The settings (dotted keys) in which two configs differ, less one that does nothing in
    either: ``controller.refit_init`` without a warm start (round 1 of an iterated run, which
    a run saved before the key existed reads as false)."""
    changed = config_differences(old, new)
    if old.controller.init is None and new.controller.init is None:
        changed = [key for key in changed if key != "controller.refit_init"]
    return changed


def with_round1_sizes(config: PipelineConfig) -> PipelineConfig:
    """An iterated run's ``config`` with round 1's sizes written out (``iterate.episodes``
    none: the collect section's, and so on), so that two runs' settings compare by what their
    round 1 runs: ``iterate.episodes=120`` with 360 episodes collected for round 2 resumes a
    run whose round 1 took the collect section's 120, and 360 with ``iterate.episodes`` none
    does not."""
    first = round_config(config, 1, Path("."))  # round 1 reads no path of the run
    sizes = dict(
        episodes=first.collect.episodes,
        vae_steps=first.vae.max_steps,
        mdrnn_steps=first.mdrnn.steps,
        controller_budget_s=first.controller.time_budget_s,
    )
    return dataclasses.replace(config, iterate=dataclasses.replace(config.iterate, **sizes))


def frozen_keys(changed: list[str], finished) -> list[str]:
    """The changed settings (dotted keys) that belong to finished stages (not to a stage that
    finished with nothing to do, as the refinement with no time)."""
    return [k for k in changed if stage_of(k) in finished and not finished[stage_of(k)].get("idle")]


REFINE_BUDGET = "refine.time_budget_s"
REFINE_MARGIN = "refine.init_margin"


def refinement_changes(saved: PipelineConfig, config: PipelineConfig, finished: dict) -> list:
    """The settings of a finished refinement that may change (the only finished stage's that
    may): more time, its CMA-ES going on from its checkpoint as if it had been given that time
    from the start, and the final selection's margin, its choice made again from the returns
    it kept."""
    done = finished.get(stage_of(REFINE_BUDGET), {})
    if not done or done.get("idle"):
        return []
    keys = []
    if config.refine.time_budget_s > saved.refine.time_budget_s:
        keys.append(REFINE_BUDGET)
    if config.refine.init_margin != saved.refine.init_margin:
        keys.append(REFINE_MARGIN)
    return keys


def stages_to_rerun(changed: list[str], finished: dict, refine_again: bool) -> set[str]:
    """The finished stages that run again with the changed settings: one that finished with
    nothing to do whose settings changed, and the refinement given more time or a margin."""
    idle = {stage for stage in map(stage_of, changed) if finished.get(stage, {}).get("idle")}
    return (idle | {stage_of(REFINE_BUDGET)}) if refine_again else idle


def forget_stages(paths: RunPaths, stages: set[str]) -> None:
    """Drop ``stages`` from the record of finished stages (as it is now: more rounds may
    have emptied it): the next run runs them."""
    done = finished_stages(paths)
    if stages & set(done):
        atomic_write_json(
            paths.root / "stages.json", {s: v for s, v in done.items() if s not in stages}
        )


def finished_stages(paths: RunPaths) -> dict:
    stages_file = paths.root / "stages.json"
    return read_json(stages_file, "stage record") if stages_file.exists() else {}


def run_pipeline(
    config: PipelineConfig,
    out: str | Path,
    preset_name: str = "custom",
    progress: bool = True,
    log: Callable[[str], None] = print,
    cluster=None,
    stages: tuple[str, ...] = STAGES,
    run_root: Path | None = None,
) -> RunPaths:
    """Run the unfinished ``stages``; ``cluster`` (``RaySettings``) puts the stages that play
    episodes on Ray: collect, C's CMA-ES (in the game or in the dream) and evaluate.
    ``run_root``: the run that ``out``, an earlier round's folder, belongs to."""
    paths = prepare_run(out, config, preset_name, run_root)
    stages_file = paths.root / "stages.json"
    done = finished_stages(paths)
    for stage in stages:
        if stage in done:
            log(f"[{stage}] done already ({done[stage]['seconds']:.0f} s), skipped")
            continue
        log(f"[{stage}] starting")
        start = time.perf_counter()
        result = _STAGE_FUNCTIONS[stage](config, paths, progress, cluster, log)
        seconds = max(time.perf_counter() - start, result.seconds or 0.0)
        # earlier runs' time not known
        partial = result.partial or (result.resumed and result.seconds is None)
        done[stage] = {"seconds": seconds, "summary": result.line, "time_partial": partial}
        if result.idle:
            done[stage]["idle"] = True
        if result.later_stale:
            for later in STAGES[STAGES.index(stage) + 1 :]:
                done.pop(later, None)
        atomic_write_json(stages_file, done)
        log(f"[{stage}] {result.line} ({seconds:.0f} s)")
    return paths


@dataclass
class StageResult:
    """A stage's one-line summary; ``seconds``: its own time summed over every resumed run,
    where the stage keeps that (CMA-ES does); ``resumed``: it went on from a checkpoint, so
    without ``seconds`` the recorded time is the last run's only."""

    line: str
    seconds: float | None = None
    resumed: bool = False
    partial: bool = False  # ``seconds`` leaves out some time spent before a resume
    idle: bool = False  # nothing to do with these settings: they may change on resume
    # the stages after this one (if finished) used what it has changed: they run again (a
    # refinement added to a finished run changes the run's agent)
    later_stale: bool = False


def round_config(config: PipelineConfig, k: int, root: Path) -> PipelineConfig:
    """Round ``k`` (1-based) of an iterated run at ``root``: its collection (the agent of round
    k - 1 after the first), with ``warm_start`` that round's V, M and C as the starting
    points, and for round 1 of several its own episodes, V and M steps and CMA-ES time (every
    later round, which with ``warm_start`` refines what it inherits, takes the sections')."""
    it = config.iterate
    collect, vae, mdrnn, controller = config.collect, config.vae, config.mdrnn, config.controller
    if k > 1:
        before = RunPaths(root / f"round{k - 1}")
        collect = dataclasses.replace(collect, policy="agent", agent=str(before.root))
        if it.warm_start:
            vae = dataclasses.replace(vae, init=str(before.vae))
            mdrnn = dataclasses.replace(mdrnn, init=str(before.mdrnn))
            controller = dataclasses.replace(controller, init=str(before.best_params))
    if k == 1 < it.rounds:
        if it.episodes is not None:
            collect = dataclasses.replace(collect, episodes=it.episodes)
        if it.vae_steps is not None:
            vae = dataclasses.replace(vae, max_steps=it.vae_steps)
        if it.mdrnn_steps is not None:
            mdrnn = dataclasses.replace(mdrnn, steps=it.mdrnn_steps)
        if it.controller_budget_s is not None:
            controller = dataclasses.replace(controller, time_budget_s=it.controller_budget_s)
    return dataclasses.replace(
        config,
        collect=collect,
        vae=vae,
        mdrnn=mdrnn,
        controller=controller,
        iterate=config.iterate if k == it.rounds else IterateConfig(),
        refine=config.refine if k == it.rounds else RefineConfig(),  # the run's agent only
    )


def last_round(config: PipelineConfig, paths: RunPaths) -> PipelineConfig:
    """The settings the run's own stages (collect .. train-controller) use."""
    return round_config(config, config.iterate.rounds, paths.root)


def _earlier_rounds(config: PipelineConfig, paths: RunPaths, progress, cluster, log) -> StageResult:
    rounds = config.iterate.rounds
    if rounds == 1:
        return StageResult("one round: none before this one")
    lines, seconds, partial = [], 0.0, False
    for k in range(1, rounds):
        folder = paths.root / f"round{k}"
        run_pipeline(
            round_config(config, k, paths.root),
            folder,
            preset_name=f"round {k} of {rounds}",
            run_root=paths.root,
            progress=progress,
            log=lambda line, k=k: log(f"[round {k}] {line}"),
            cluster=cluster,
            stages=ROUND_STAGES,
        )
        stages = finished_stages(RunPaths(folder))
        lines.append(f"round {k} ({folder.name}/): {stages['train-controller']['summary']}")
        # the rounds' own stage times, which count the time before a resume where they can
        seconds += sum(stage["seconds"] for stage in stages.values())
        partial = partial or any(stage.get("time_partial") for stage in stages.values())
    return StageResult("; ".join(lines), seconds, partial=partial)


def _collect(config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log) -> StageResult:
    from worldmodels.execution import collect

    settings = last_round(config, paths).collect
    return StageResult(collect(settings, str(paths.episodes), progress, cluster).line())


def _train_vae(
    config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log
) -> StageResult:
    from worldmodels.vision.train import train_vae

    resume = (paths.vae_dir / "latest.pt").exists()
    settings = last_round(config, paths).vae
    summary = train_vae(paths.episodes, paths.vae_dir, settings, resume=resume, progress=progress)
    return StageResult(summary.line(), summary.total_seconds, resume)


def _encode(config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log) -> StageResult:
    from worldmodels.vision.encode import encode_store

    mirror = last_round(config, paths).mdrnn.mirror  # M's mirrored windows need these latents
    summary = encode_store(
        paths.episodes, paths.vae, paths.series, progress=progress, mirror=mirror
    )
    return StageResult(summary.line())


def _train_mdrnn(
    config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log
) -> StageResult:
    from worldmodels.memory.train import train_mdrnn

    resume = (paths.mdrnn_dir / "latest.pt").exists()
    summary = train_mdrnn(
        paths.series,
        paths.mdrnn_dir,
        last_round(config, paths).mdrnn,
        resume=resume,
        progress=progress,
        vae_path=paths.vae,
        episodes_path=paths.episodes,
    )
    return StageResult(summary.line(), summary.total_seconds, resume)


def _train_controller(
    config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log
) -> StageResult:
    from worldmodels.controller.train import train_controller
    from worldmodels.evolution.cmaes import STATE

    resume = (paths.controller / STATE).exists()
    settings = last_round(config, paths).controller
    if config.dream is not None:  # in M's dream, scored in the real game
        from worldmodels.agent import Agent
        from worldmodels.dream.pictures import dream_beside_real
        from worldmodels.dream.train import train_in_dream
        from worldmodels.memory.train import load_mdrnn

        summary = train_in_dream(
            paths.mdrnn,
            paths.series,
            paths.vae,
            paths.controller,
            settings,
            config.dream,
            resume=resume,
            progress=progress,
            cluster=cluster,
        )
        agent = Agent.load(paths.root, device=config.controller.device)
        gif = dream_beside_real(
            agent,
            load_mdrnn(paths.mdrnn, agent.policy.device),
            paths.controller / "dream_vs_real.gif",
            temperature=config.dream.temperature,
            max_steps=min(config.dream.max_steps, 300),
        )
        steps = f"real {gif.real_steps}, dream {gif.dream_steps} steps"
        line = f"{summary.line()}; {gif.path.name} ({steps}); {summary.check.line()}"
        if summary.probe is not None:
            line += "; held actions: " + (
                "; ".join(summary.probe.warnings()) or "dream and game agree"
            )
        line += keep_best_round(config, paths, progress, cluster)
        return StageResult(line, summary.seconds, resume)
    summary = train_controller(
        paths.vae,
        paths.mdrnn,
        paths.controller,
        settings,
        resume=resume,
        progress=progress,
        cluster=cluster,
        episodes_path=paths.episodes,
    )
    line = summary.line() + keep_best_round(config, paths, progress, cluster)
    return StageResult(line, summary.seconds, resume)


ROUNDS_JSON = "rounds.json"


def keep_best_round(config: PipelineConfig, paths: RunPaths, progress, cluster) -> str:
    """With ``iterate.keep_best_round``: every round's agent plays the same fresh selection
    tracks in the real game, and the best mean becomes the run's agent (an earlier round's is
    named in controller.json's ``agent_from``). The record is ``controller/rounds.json``;
    a rerun with the same agents reuses it. Returns the stage summary's addition."""
    from worldmodels.agent import Agent, agent_digest
    from worldmodels.controller.evaluate import evaluate_agent
    from worldmodels.controller.train import set_agent_from
    from worldmodels.utils.io import atomic_write_json, read_json

    if config.iterate.rounds == 1 or not config.iterate.keep_best_round:
        return ""
    settings = last_round(config, paths).controller
    seeds = settings.round_selection_seeds()
    set_agent_from(paths.controller, None)  # the last round's own agent first
    folders = [f"round{k}" for k in range(1, config.iterate.rounds)] + ["."]
    key = {
        "seeds": [seeds.start, seeds.stop - 1],
        "agents": [agent_digest(paths.root / f) for f in folders],
    }
    path = paths.controller / ROUNDS_JSON
    record = read_json(path, "round choice") if path.exists() else None
    if record is None or {k: record.get(k) for k in key} != key:
        rows = []
        for k, folder in enumerate(folders, start=1):
            result = evaluate_agent(
                Agent.load(paths.root / folder, device=settings.device),
                episodes=len(seeds),
                seed=seeds.start,
                num_envs=settings.num_envs,
                backend=settings.backend,
                max_steps=config.evaluate.max_steps,
                progress=progress,
                cluster=cluster,
                groups=settings.env_groups,
            )
            rows.append(
                {
                    "round": k,
                    "folder": folder,
                    "mean": result.mean,
                    "std": result.std,
                    "returns": [float(r) for r in result.returns],
                }
            )
        best = max(rows, key=lambda r: (r["mean"], r["round"]))  # a tie keeps the later round
        record = {**key, "chosen": best["round"], "rounds": rows}
        atomic_write_json(path, record)
    chosen = record["rounds"][record["chosen"] - 1]
    if chosen["folder"] != ".":
        set_agent_from(paths.controller, chosen["folder"])
    means = ", ".join(f"round {r['round']} {r['mean']:.1f}" for r in record["rounds"])
    return (
        f"; rounds on {len(seeds)} fresh selection tracks: {means}; "
        f"the run's agent is round {chosen['round']}'s"
    )


REFINE_FOLDER = "refine"  # the refine stage's controller folder in a run folder
REFINE_START = "start.json"  # which agent the refinement started from
# the refinement's CMA-ES seed is controller.seed + this: training tracks that no round's CMA-ES
# (every round on controller.seed) played
REFINE_SEED = 1


def _refine_controller(
    config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log
) -> StageResult:
    from worldmodels.agent import agent_source, checkpoint_paths
    from worldmodels.controller.train import set_agent_from, train_controller
    from worldmodels.evolution.cmaes import STATE

    refine = config.refine
    if not refine.enabled:
        return StageResult("none (refine.time_budget_s is 0)", idle=True)
    if config.dream is not None:
        raise ValueError(DREAM_REFINE)
    folder = paths.root / REFINE_FOLDER
    kept = refinement_start(paths, folder)
    set_agent_from(paths.controller, kept)  # the agent before refinement (a rerun's too)
    start, info = agent_source(paths.root)
    vae, mdrnn, best = checkpoint_paths(start, info)
    base = last_round(config, paths).controller
    settings = dataclasses.replace(refine.on(base), init=str(best), seed=base.seed + REFINE_SEED)
    resume = (folder / STATE).exists()
    summary = train_controller(
        vae, mdrnn, folder, settings, resume=resume, progress=progress, cluster=cluster
    )
    start_name = f"{kept}'s" if kept else "the run's own"
    if summary.selection is not None and summary.selection["chosen"] == 0:
        line = f"{summary.line()}; the agent it started from ({start_name}) kept"
    else:
        set_agent_from(paths.controller, REFINE_FOLDER)
        line = f"{summary.line()}; the refined agent is the run's (it started from {start_name})"
    return StageResult(line, summary.seconds, resume, later_stale=True)


def refinement_start(paths: RunPaths, folder: Path) -> str | None:
    """The ``agent_from`` of the run's controller before its refinement (None: its own agent),
    recorded in ``folder`` when the refinement first starts."""
    from worldmodels.controller.train import read_controller_json

    record = folder / REFINE_START
    if not record.exists():
        kept = read_controller_json(paths.controller).get("agent_from")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, {"agent_from": kept})
    return read_json(record, "refinement start")["agent_from"]


def _evaluate(config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log) -> StageResult:
    from worldmodels.agent import Agent
    from worldmodels.controller.evaluate import evaluate_agent, save_eval

    ev = config.evaluate
    result = evaluate_agent(
        Agent.load(paths.root),
        episodes=ev.episodes,
        seed=ev.seed,
        num_envs=ev.num_envs,
        backend=ev.backend,
        max_steps=ev.max_steps,
        progress=progress,
        cluster=cluster,
        groups=ev.env_groups,
    )
    save_eval(result, paths.eval, paths.root)
    return StageResult(result.line())


def _report(config: PipelineConfig, paths: RunPaths, progress: bool, cluster, log) -> StageResult:
    from worldmodels.report import write_report

    write_report(paths)
    return StageResult(f"report written to {paths.report}")


_STAGE_FUNCTIONS = {
    "earlier-rounds": _earlier_rounds,
    "collect": _collect,
    "train-vae": _train_vae,
    "encode": _encode,
    "train-mdrnn": _train_mdrnn,
    "train-controller": _train_controller,
    "refine-controller": _refine_controller,
    "evaluate": _evaluate,
    "report": _report,
}
