"""Exploration policies for collection, batched over environment slots and selected by name.

Each slot has its own random generator, seeded per episode, so an episode's actions depend
only on its seed and its frames, not on which slot ran it or what ran beside it.
"""

from __future__ import annotations

import numpy as np

from worldmodels.envs.carracing import ACTION_HIGH, ACTION_LOW


class ExplorationPolicy:
    name: str

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.rngs: list[np.random.Generator | None] = [None] * num_slots

    def start(self, slot: int, rng: np.random.Generator) -> None:
        """Begin a new episode in ``slot``, drawing its randomness from ``rng``."""
        self.rngs[slot] = rng

    def act(self, frames: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Actions (N, 3) for preprocessed frames (N, 64, 64, 3); inactive rows are zeros."""
        raise NotImplementedError


def brownian_step(action, rng, step_std, low, high) -> np.ndarray:
    """One step of a smooth random walk: clip(a + step_std * N(0, 1), low, high)."""
    return np.clip(action + rng.standard_normal(action.shape) * step_std, low, high)


class BrownianPolicy(ExplorationPolicy):
    """A smooth random walk on the actions: a_{t+1} = clip(a_t + sigma * sqrt(dt) * N(0, 1)).

    Starts from a uniform draw in the action box. Smooth actions drive further along the track
    than white noise, so the data set sees more of the road.
    """

    name = "brownian"

    def __init__(self, num_slots: int, sigma: float = 1.0, dt: float = 1 / 50):
        super().__init__(num_slots)
        self.step_std = sigma * np.sqrt(dt)
        self.actions = np.zeros((num_slots, 3), np.float32)

    def start(self, slot, rng):
        super().start(slot, rng)
        self.actions[slot] = rng.uniform(ACTION_LOW, ACTION_HIGH)

    def act(self, frames, active):
        out = np.zeros((self.num_slots, 3), np.float32)
        for slot in np.flatnonzero(active):
            self.actions[slot] = brownian_step(
                self.actions[slot], self.rngs[slot], self.step_std, ACTION_LOW, ACTION_HIGH
            )
            out[slot] = self.actions[slot]
        return out


class RandomWeightsPolicy(ExplorationPolicy):
    """The paper's collection policy: per episode, a controller with fresh random weights.

    The 2018 code drew every controller weight from N(0, s^2) with s ~ U(0, 0.01) per episode
    and fed it [z, h] from an untrained V and M. Here a fixed random projection of the frame to
    z + h = 288 features stands in for the untrained V and M (same role, no networks to run).
    Actions are squashed as the controller's: steer tanh, gas (tanh + 1) / 2, brake
    clip(tanh, 0, 1). Such tiny weights mostly drive straight at half throttle, as in the paper.
    """

    name = "random_weights"

    def __init__(self, num_slots: int, features: int = 288, max_std: float = 0.01, seed: int = 0):
        super().__init__(num_slots)
        self.max_std = max_std
        proj_rng = np.random.default_rng(seed)
        self.projection = proj_rng.standard_normal((64 * 64 * 3, features)).astype(np.float32)
        self.projection /= np.sqrt(64 * 64 * 3)
        self.weights = np.zeros((num_slots, features + 1, 3), np.float32)

    def start(self, slot, rng):
        super().start(slot, rng)
        std = rng.uniform(0.0, self.max_std)
        self.weights[slot] = rng.standard_normal(self.weights.shape[1:]) * std

    def act(self, frames, active):
        out = np.zeros((self.num_slots, 3), np.float32)
        ids = np.flatnonzero(active)
        if ids.size == 0:
            return out
        x = frames[ids].reshape(len(ids), -1).astype(np.float32) / 127.5 - 1.0
        feats = np.concatenate([x @ self.projection, np.ones((len(ids), 1), np.float32)], 1)
        raw = np.tanh(np.einsum("nf,nfa->na", feats, self.weights[ids]))
        out[ids, 0] = raw[:, 0]
        out[ids, 1] = (raw[:, 1] + 1) / 2
        out[ids, 2] = np.clip(raw[:, 2], 0, 1)
        return out


class AgentPolicy(ExplorationPolicy):
    """A trained agent (a run folder's V, M and C) plus smooth exploration noise: the paper's
    iterative procedure, where the next round's data is collected by the evolved controller.

    Random policies barely drive (brownian: ~11 of a track's ~280 tiles per episode), so V
    never sees the fast corners a good controller meets; the agent's own episodes do (Doom: M
    sees where the controller's own actions lead, the states its dream was wrong about). Per
    episode a noise scale s ~ U(0, ``noise``) is drawn, so the data span the clean agent to
    near-random play around its line; the noise is a brownian walk in [-1, 1] per action (as
    the brownian policy's), times s, added to C's actions and clipped to the action box. M's
    state follows the actions taken.
    """

    name = "agent"

    def __init__(
        self,
        num_slots: int,
        agent: str = "",
        noise: float = 0.5,
        env: str = "carracing",
        device: str = "cpu",
    ):
        from worldmodels.agent import Agent

        super().__init__(num_slots)
        if not agent:
            raise ValueError("policy 'agent' needs the run folder of a trained agent (agent=RUN)")
        self.agent = Agent.load(agent, device=device)
        if self.agent.env != env:
            raise ValueError(f"{agent}: its agent plays {self.agent.env!r}, not {env!r}")
        self.agent.reset(num_slots)
        self.agent.policy.preprocess = lambda frames: frames  # collection preprocesses already
        self.action_size = self.agent.spec.action_size
        self.noise = noise
        self.step_std = np.sqrt(1 / 50)  # the brownian policy's walk
        self.scale = np.zeros(num_slots, np.float32)
        self.walk = np.zeros((num_slots, self.action_size), np.float32)

    def start(self, slot, rng):
        super().start(slot, rng)
        self.scale[slot] = rng.uniform(0.0, self.noise)
        self.walk[slot] = rng.uniform(-1.0, 1.0, self.action_size)
        self.agent.policy.start(np.array([slot]), [int(rng.integers(2**31))])

    def act(self, frames, active):
        out = np.zeros((self.num_slots, self.action_size), np.float32)
        ids = np.flatnonzero(active)
        if ids.size == 0:
            return out
        for slot in ids:
            self.walk[slot] = brownian_step(self.walk[slot], self.rngs[slot], self.step_std, -1, 1)
        out[ids] = self.agent.act(frames[ids], ids, offset=self.scale[ids, None] * self.walk[ids])
        return out


class DoomRandomPolicy(ExplorationPolicy):
    """The paper's Doom TakeCover collection: a uniform random action in [-1, 1], held for a
    uniform random 1-10 frames, then a new one. Actions are (N, 1), C's single output, which
    the environment maps to left / stay / right.
    """

    name = "doom_random"
    action_size = 1

    def __init__(self, num_slots: int, min_hold: int = 1, max_hold: int = 10):
        super().__init__(num_slots)
        self.min_hold, self.max_hold = min_hold, max_hold
        self.actions = np.zeros((num_slots, 1), np.float32)
        self.left = np.zeros(num_slots, np.int64)  # frames the current action is still held

    def start(self, slot, rng):
        super().start(slot, rng)
        self.left[slot] = 0

    def act(self, frames, active):
        out = np.zeros((self.num_slots, 1), np.float32)
        for slot in np.flatnonzero(active):
            if self.left[slot] == 0:
                rng = self.rngs[slot]
                self.actions[slot] = rng.uniform(-1.0, 1.0)
                self.left[slot] = rng.integers(self.min_hold, self.max_hold + 1)
            self.left[slot] -= 1
            out[slot] = self.actions[slot]
        return out


class DoomLongHoldsPolicy(DoomRandomPolicy):
    """A deviation from the paper, for M's sake: half of the holds are the paper's 1-10 frames,
    the other half 11-``long_hold`` frames. A controller in the dream soon holds one direction
    for hundreds of steps; with only the paper's short holds in its data, M has never seen where
    that leads and stops dreaming deaths there (``dream-check --held-actions``).
    """

    name = "doom_long_holds"

    def __init__(self, num_slots: int, long_hold: int = 300, long_share: float = 0.5):
        super().__init__(num_slots)
        self.long_hold, self.long_share = long_hold, long_share

    def act(self, frames, active):
        for slot in np.flatnonzero(active):
            if self.left[slot] == 0:
                rng = self.rngs[slot]
                self.actions[slot] = rng.uniform(-1.0, 1.0)
                long = rng.random() < self.share_of_long_holds(slot)
                low, high = (self.max_hold + 1, self.long_hold) if long else (1, self.max_hold)
                self.left[slot] = rng.integers(low, high + 1)
        return super().act(frames, active)

    def share_of_long_holds(self, slot: int) -> float:
        return self.long_share


class DoomMixedPolicy(DoomLongHoldsPolicy):
    """Half the episodes the paper's (every hold 1-10 frames), half ``doom_long_holds``'; the
    episode's seed decides which. A deviation, named: V learns from the paper's long random
    episodes (late fireballs included: long holds die sooner), and M sees both the paper's
    data and where a held direction leads.
    """

    name = "doom_mixed"

    def __init__(self, num_slots: int, long_hold: int = 300, long_share: float = 0.5):
        super().__init__(num_slots, long_hold, long_share)
        self.episode_share = np.zeros(num_slots)  # this episode's share of long holds

    def start(self, slot, rng):
        super().start(slot, rng)
        self.episode_share[slot] = self.long_share if rng.random() < 0.5 else 0.0

    def share_of_long_holds(self, slot: int) -> float:
        return self.episode_share[slot]


POLICIES = {
    p.name: p
    for p in (
        BrownianPolicy,
        RandomWeightsPolicy,
        AgentPolicy,
        DoomRandomPolicy,
        DoomLongHoldsPolicy,
        DoomMixedPolicy,
    )
}
ENV_POLICIES = {
    "carracing": ("brownian", "random_weights", "agent"),
    "doom": ("doom_random", "doom_long_holds", "doom_mixed", "agent"),
}


def make_policy(
    name: str, num_slots: int, agent: str = "", agent_noise: float = 0.5, env: str = "carracing"
) -> ExplorationPolicy:
    """The policy ``name`` for ``num_slots`` slots; ``agent`` and ``agent_noise`` are the
    run folder and noise of policy ``agent`` (CollectConfig's fields of the same names), whose
    agent must play ``env``."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name == AgentPolicy.name:
        return AgentPolicy(num_slots, agent, agent_noise, env)
    return POLICIES[name](num_slots)


def policy_for(config, num_slots: int) -> ExplorationPolicy:
    """The exploration policy a ``CollectConfig`` names, for ``num_slots`` slots."""
    return make_policy(config.policy, num_slots, config.agent, config.agent_noise, config.env)
