"""Does the dream answer a held action as the game does? (Doom)

``dream-check`` replays the data's own random actions; a controller, though, finds one action
and holds it, and that is exactly where a dream can be wrong (the first Doom laptop M let
"always left" survive forever). This probe holds each of C's three actions (left, stay,
right) from the same real starts, in the game and in M's dream, and sets side by side how
long each survives, how often it dies, and where the view moves: the horizontal shift of the
scene after ``shift_steps`` steps, measured on the 64x64 frames (the game's, preprocessed;
the dream's, decoded by V). A dream whose survival under a held action is more than 1.5x the
game's (or less than 1/1.5x), or whose view moves the other way, gets a warning.

The controller probe asks the same of a trained C: from the same real starts it plays the game,
the dream, and the game's own action sequences replayed open loop in the dream, and sets side
by side how long each lasts and how C steers (direction shares, switches, stretch lengths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import DreamConfig
from worldmodels.dream.check import TOO_FAR, evenly_spaced
from worldmodels.dream.env import OBS_MODE_OF, DreamEnv, drive_dreams, load_initial_latents
from worldmodels.memory.mdrnn import MDNRNN
from worldmodels.vision.vae import ConvVAE

PROBE_JSON = "held_actions.json"  # the probe run before every Doom dream training
HELD = {"left": -1.0, "stay": 0.0, "right": 1.0}  # C's output held; Doom maps it three ways
MAX_SHIFT = 12  # pixels of 64 searched either way
# ViZDoom's player accelerates from rest: a held direction moves the scene 0 px after 8 steps,
# 1 after 12, 5 after 24, 8 after 32 and 12 (the search's limit) after 40, the same from every
# start; 24 steps is clearly measurable and most held-action games are still running then
SHIFT_STEPS = 24


@dataclass
class HeldAction:
    action: str
    game_length: float
    dream_length: float
    game_deaths: float
    dream_deaths: float
    game_shift: float  # mean horizontal shift of the scene, pixels (+: the scene moves right)
    dream_shift: float

    def warning(self) -> str | None:
        problems = []
        ratio = self.dream_length / max(self.game_length, 1e-9)
        if not 1 / TOO_FAR <= ratio <= TOO_FAR:
            problems.append(
                f"survives {ratio:.1f}x {'longer' if ratio > 1 else 'shorter'} in the dream"
            )
        if abs(self.game_shift) >= 1 and np.sign(self.dream_shift) != np.sign(self.game_shift):
            problems.append(
                f"the view moves {self.dream_shift:+.1f} px in the dream, {self.game_shift:+.1f} "
                "in the game"
            )
        return f"holding {self.action}: {' and '.join(problems)}" if problems else None


@dataclass
class HeldActionProbe:
    episodes: int
    temperature: float
    shift_steps: int
    rows: list[HeldAction]

    def warnings(self) -> list[str]:
        return [w for w in (row.warning() for row in self.rows) if w]

    def table(self) -> str:
        lines = [
            f"held actions from {self.episodes} real starts (tau {self.temperature}; view shift "
            f"after {self.shift_steps} steps, px)",
            f"{'held':<6} {'game steps':>10} {'dream steps':>11} {'deaths game/dream':>18} "
            f"{'shift game':>10} {'shift dream':>11}",
        ]
        for r in self.rows:
            deaths = f"{r.game_deaths:.0%} / {r.dream_deaths:.0%}"
            lines.append(
                f"{r.action:<6} {r.game_length:>10.0f} {r.dream_length:>11.0f} {deaths:>18} "
                f"{r.game_shift:>+10.1f} {r.dream_shift:>+11.1f}"
            )
        lines += [f"WARNING: {w}: C can exploit this" for w in self.warnings()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "warnings": self.warnings()}


def horizontal_shift(before: np.ndarray, after: np.ndarray) -> float:
    """The shift (pixels, + = right) that best lines up ``after``'s column brightness profile
    with ``before``'s; frames uint8 or float (H, W, 3)."""
    a = np.asarray(before, np.float64).mean(axis=(0, 2))
    b = np.asarray(after, np.float64).mean(axis=(0, 2))
    a, b = a - a.mean(), b - b.mean()
    width = len(a)
    best, best_err = 0, np.inf
    for s in range(-MAX_SHIFT, MAX_SHIFT + 1):
        lo, hi = max(0, s), min(width, width + s)
        err = np.mean((b[lo:hi] - a[lo - s : hi - s]) ** 2)
        if err < best_err:
            best, best_err = s, err
    return float(best)


def probe_dreams(mdrnn, latents, n: int, dream: DreamConfig, limit: int, obs_mode: str, seed: int):
    """``n`` dreams at ``dream``'s temperature and done threshold, up to ``limit`` steps."""
    return DreamEnv(
        mdrnn,
        latents,
        n,
        temperature=dream.temperature,
        max_steps=limit,
        obs_mode=obs_mode,
        done_threshold=dream.done_threshold,
        seed=seed,
    )


def _mean_or_zero(values: np.ndarray) -> float:
    """Mean over the rows that lived long enough to measure; 0 when none did."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else 0.0


def _episode_seeds(store, picked) -> list[int]:
    seeds = []
    for i in picked:
        meta = store[int(i)].meta
        seeds.append(int(meta["seed"]) if meta.get("seed") is not None else int(i))
    return seeds


def play_in_game(seeds: list[int], max_steps: int, act, seen=None):
    """Each seed's game to its end (or ``max_steps``): lengths and deaths.

    ``act(obs, ids)`` gives the running games' actions (len(ids), 1) from the raw screens;
    ``seen(t, obs, ids)``, if given, sees the screens after the reset (t = 0, every game) and
    after each step t (the games that took it).
    """
    from worldmodels.envs import make_vec_env

    n = len(seeds)
    lengths, died = np.zeros(n, np.int64), np.zeros(n, bool)
    with make_vec_env("doom", num_envs=n, max_steps=max_steps, quiet=True) as env:
        obs = env.reset(seeds=seeds)
        running = np.ones(n, bool)
        if seen is not None:
            seen(0, obs, np.arange(n))
        for t in range(1, max_steps + 1):
            ids = np.flatnonzero(running)
            actions = np.zeros((n, 1), np.float32)
            actions[ids] = act(obs, ids)
            result = env.step(actions, running)
            if seen is not None:
                seen(t, result.obs, ids)
            lengths[ids] += 1
            died |= result.terminated & running
            running &= ~(result.terminated | result.truncated)
            obs = result.obs
            if not running.any():
                break
    return lengths, died


def play_held_in_game(seeds: list[int], action: float, max_steps: int, shift_steps: int):
    """Each seed's game with ``action`` held: lengths, deaths, and the view shifts."""
    from worldmodels.envs.doom import preprocess_doom_frames

    views = {}

    def seen(t, obs, ids):
        if t in (0, shift_steps):
            views[t] = (preprocess_doom_frames(obs), ids)

    lengths, died = play_in_game(
        seeds, max_steps, lambda obs, ids: np.full((len(ids), 1), action, np.float32), seen
    )
    shifts = np.full(len(seeds), np.nan)  # NaN: ended sooner, no view to compare
    if shift_steps in views:
        (first, _), (later, ids) = views[0], views[shift_steps]
        shifts[ids] = [horizontal_shift(first[i], later[i]) for i in ids]
    return lengths, died, shifts


@torch.no_grad()
def dream_held(env: DreamEnv, vae: ConvVAE, picked, action: float, shift_steps: int):
    """Each start's dream with ``action`` held: lengths, deaths, and the decoded view shifts."""
    n = env.num_envs
    seen: dict[int, torch.Tensor] = {}
    held = torch.full((n, env.mdrnn.action_size), action, device=env.device)

    def act(ids, obs, taken):
        for t in (0, shift_steps):
            if t not in seen and int(taken.max()) == t:
                seen[t] = obs.clone()
        return held

    dreams = drive_dreams(env, act, torch.as_tensor(picked))
    shifts = np.full(n, np.nan)
    if 0 in seen and shift_steps in seen:
        frames = [vae.decode(seen[t].to(next(vae.parameters()).device)) for t in (0, shift_steps)]
        first, later = (f.permute(0, 2, 3, 1).cpu().numpy() for f in frames)
        shifts = np.array([horizontal_shift(first[i], later[i]) for i in range(n)])
        shifts[dreams.lengths.numpy() < shift_steps] = np.nan  # ended sooner
    return dreams.lengths.numpy(), dreams.died.numpy(), shifts


def probe_held_actions(
    mdrnn: MDNRNN,
    vae: ConvVAE,
    series_path: str | Path,
    dream: DreamConfig,
    episodes: int = 16,
    shift_steps: int = SHIFT_STEPS,
    max_steps: int | None = None,
    seed: int = 0,
) -> HeldActionProbe:
    """Left, stay and right held from up to ``episodes`` real starts, game beside dream."""
    from worldmodels.memory.data import open_series

    if mdrnn.action_size != 1:
        raise ValueError("held-action probes are for Doom (one action); this M takes more")
    info = open_series(series_path, mdrnn.z_size, mdrnn.action_size)
    picked = evenly_spaced(len(info.store), episodes)
    seeds = _episode_seeds(info.store, picked)
    latents = load_initial_latents(series_path, mdrnn.z_size, mdrnn.action_size)
    limit = max_steps or dream.max_steps
    rows = []
    for name, action in HELD.items():
        env = probe_dreams(mdrnn, latents, len(picked), dream, limit, "z", seed)
        d_len, d_died, d_shift = dream_held(env, vae, picked, action, shift_steps)
        g_len, g_died, g_shift = play_held_in_game(seeds, action, limit, shift_steps)
        rows.append(
            HeldAction(
                name,
                game_length=float(g_len.mean()),
                dream_length=float(d_len.mean()),
                game_deaths=float(g_died.mean()),
                dream_deaths=float(d_died.mean()),
                game_shift=_mean_or_zero(g_shift),
                dream_shift=_mean_or_zero(d_shift),
            )
        )
    return HeldActionProbe(len(picked), dream.temperature, shift_steps, rows)


# ------------------------------------------------------------------ C's own driving
@dataclass
class Driving:
    """How a controller drove a set of episodes: how long they lasted and how it steered."""

    where: str  # "game", "dream", or "dream, game's actions": the game's sequences replayed
    lengths: list[int]
    deaths: float  # fraction of episodes ended by a death
    left: float  # fractions of all steps in each direction
    stay: float
    right: float
    switches: float  # changes of direction per 100 steps
    mean_hold: float  # steps per stretch of one direction

    @property
    def length(self) -> float:
        return float(np.mean(self.lengths))


def driving(where: str, lengths, died, actions: list[np.ndarray]) -> Driving:
    """Summary of episodes whose per-step actions (C's tanh outputs) are ``actions``."""
    from worldmodels.controller.model import doom_direction

    directions = [doom_direction(np.asarray(a, np.float32)) for a in actions if len(a)]
    steps = sum(len(d) for d in directions)
    pooled = np.concatenate(directions) if directions else np.zeros(0, np.int64)
    changes = sum(int(np.count_nonzero(np.diff(d))) for d in directions)
    stretches = changes + len(directions)  # each episode's first stretch, then one per change
    return Driving(
        where,
        lengths=[int(n) for n in lengths],
        deaths=float(np.mean(died)),
        left=float(np.mean(pooled == -1)) if steps else 0.0,
        stay=float(np.mean(pooled == 0)) if steps else 0.0,
        right=float(np.mean(pooled == 1)) if steps else 0.0,
        switches=100.0 * changes / max(steps, 1),
        mean_hold=steps / max(stretches, 1),
    )


@dataclass
class ControllerProbe:
    """A controller from the same real starts in the game, in the dream, and the game's own
    action sequences replayed in the dream (open loop: C does not react to the dream)."""

    episodes: int
    temperature: float
    rows: list[Driving]

    def row(self, where: str) -> Driving:
        return next(r for r in self.rows if r.where == where)

    def warnings(self) -> list[str]:
        game, dream = self.row("game"), self.row("dream")
        ratio = dream.length / max(game.length, 1e-9)
        if 1 / TOO_FAR <= ratio <= TOO_FAR:
            return []
        longer = "longer" if ratio > 1 else "shorter"
        return [f"C survives {ratio:.1f}x {longer} in the dream than in the game"]

    def table(self) -> str:
        lines = [
            f"the controller from {self.episodes} real starts (tau {self.temperature})",
            f"{'where':<22} {'steps':>6} {'deaths':>6} {'left':>5} {'stay':>5} {'right':>5} "
            f"{'switches/100':>12} {'mean hold':>9}",
        ]
        for r in self.rows:
            lines.append(
                f"{r.where:<22} {r.length:>6.0f} {r.deaths:>6.0%} {r.left:>5.0%} {r.stay:>5.0%} "
                f"{r.right:>5.0%} {r.switches:>12.1f} {r.mean_hold:>9.1f}"
            )
        lines += [f"WARNING: {w}: C exploits M" for w in self.warnings()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "warnings": self.warnings()}


def play_controller_in_game(agent, seeds: list[int], max_steps: int):
    """The agent plays each seed's game to its end: lengths, deaths, C's actions per step."""
    taken: list[list[float]] = [[] for _ in seeds]
    agent.reset(len(seeds), seeds)  # z's noise seeded by the episode's seed, as in evaluation

    def act(obs, ids):
        actions = agent.act(obs[ids], ids)
        for i, a in zip(ids, actions[:, 0], strict=True):
            taken[i].append(float(a))
        return actions

    lengths, died = play_in_game(seeds, max_steps, act)
    return lengths, died, [np.array(t, np.float32) for t in taken]


def _per_row(steps: list[tuple[np.ndarray, np.ndarray]], n: int) -> list[np.ndarray]:
    """Per-row action sequences from ``(rows, actions)`` recorded step by step."""
    rows: list[list[float]] = [[] for _ in range(n)]
    for ids, values in steps:
        for i, v in zip(ids, values, strict=True):
            rows[i].append(float(v))
    return [np.array(r, np.float32) for r in rows]


@torch.no_grad()
def dream_controller(env: DreamEnv, params: np.ndarray, spec, picked):
    """The controller ``params`` in one dream per start: lengths, deaths, actions per step."""
    from worldmodels.controller.model import controller_actions

    rows = torch.as_tensor(params, dtype=env.z.dtype, device=env.device)
    rows = rows.expand(env.num_envs, -1)
    actions = torch.zeros(env.num_envs, env.action_size, device=env.device, dtype=env.z.dtype)
    steps = []

    def act(ids, obs, taken):
        actions[ids] = controller_actions(rows[ids], obs[ids], spec)
        steps.append((ids.cpu().numpy(), actions[ids, 0].float().cpu().numpy()))
        return actions

    dreams = drive_dreams(env, act, torch.as_tensor(picked))
    return dreams.lengths.numpy(), dreams.died.numpy(), _per_row(steps, env.num_envs)


@torch.no_grad()
def dream_replay(env: DreamEnv, picked, sequences: list[np.ndarray]):
    """Each start's dream driven by a fixed action sequence (its last action held after it
    ends): lengths, deaths, the actions taken."""
    width = max(max(len(s) for s in sequences), 1)
    table = np.zeros((env.num_envs, width), np.float32)
    for i, s in enumerate(sequences):
        if len(s):
            table[i, : len(s)] = s
            table[i, len(s) :] = s[-1]
    table_t = torch.as_tensor(table, device=env.device, dtype=env.z.dtype)
    every = torch.arange(env.num_envs, device=env.device)
    steps = []

    def act(ids, obs, taken):
        now = table_t[every, taken.clamp(max=width - 1)].unsqueeze(1)
        steps.append((ids.cpu().numpy(), now[ids, 0].float().cpu().numpy()))
        return now.expand(-1, env.action_size)

    dreams = drive_dreams(env, act, torch.as_tensor(picked))
    return dreams.lengths.numpy(), dreams.died.numpy(), _per_row(steps, env.num_envs)


def probe_controller(
    agent,
    mdrnn: MDNRNN,
    series_path: str | Path,
    dream: DreamConfig,
    episodes: int = 16,
    max_steps: int | None = None,
    seed: int = 0,
) -> ControllerProbe:
    """A Doom agent (``Agent``) from up to ``episodes`` real starts of the series store: in the
    game (the starts' seeds), in ``mdrnn``'s dream, and its game actions replayed in the dream.
    A dream that C outlives far longer than the game is a dream C exploits; the replay tells
    whether the actions alone survive there (M mis-models what C does) or whether C survives
    by reacting to the dream's own state."""
    from worldmodels.memory.data import open_series

    if agent.env != "doom":
        raise ValueError(f"the controller probe is for Doom agents; this one plays {agent.env}")
    info = open_series(series_path, mdrnn.z_size, mdrnn.action_size)
    picked = evenly_spaced(len(info.store), episodes)
    seeds = _episode_seeds(info.store, picked)
    latents = load_initial_latents(series_path, mdrnn.z_size, mdrnn.action_size)
    limit = max_steps or dream.max_steps

    game = play_controller_in_game(agent, seeds, limit)
    n = len(picked)
    controlled = probe_dreams(mdrnn, latents, n, dream, limit, OBS_MODE_OF[agent.spec.mode], seed)
    dreamt = dream_controller(controlled, agent.params, agent.spec, picked)
    replayed = dream_replay(
        probe_dreams(mdrnn, latents, n, dream, limit, "z", seed), picked, game[2]
    )
    rows = [
        driving("game", *game),
        driving("dream", *dreamt),
        driving("dream, game's actions", *replayed),
    ]
    return ControllerProbe(len(picked), dream.temperature, rows)
