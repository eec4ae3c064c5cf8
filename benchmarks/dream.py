"""Dream steps/s (M as a batched environment) against the real game's steps/s, same run.

    python benchmarks/dream.py [--steps 50] [--batches 1 64 1024 4096] [--real-steps 400]

The dream is the paper's Doom M (z 64, LSTM 512, 5 mixtures, done head, restart input:
1,678,785 parameters as the paper counts) with C = [z, c, h] -> 1 (1,088), every row its own
controller parameters, stepped for ``--steps`` steps at each batch size, on CPU and on CUDA
when present. The real side is Doom TakeCover through ViZDoom: the bare game (random actions)
and the full V + M + C agent through the rollout engine, on the same machine. Networks are
untrained: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from worldmodels.controller.model import ControllerSpec, controller_actions
from worldmodels.dream.env import DreamEnv, InitialLatents
from worldmodels.memory.mdrnn import MDNRNN, paper_parameter_count


def doom_m(device) -> MDNRNN:
    torch.manual_seed(0)
    m = MDNRNN(z_size=64, action_size=1, hidden_size=512, done_head=True, extra_inputs=1)
    return m.to(device).eval()


def dream_rate(device: str, batch: int, steps: int) -> float:
    """Dream steps/s (rows x steps / s), controller included; rows never drop out."""
    m = doom_m(device)
    latents = InitialLatents(torch.randn(100, 64), torch.full((100, 64), -4.0))
    env = DreamEnv(m, latents, batch, max_steps=10**9, seed=0)
    spec = ControllerSpec.doom()
    params = torch.randn(batch, spec.num_params, device=device) * 0.1
    obs = env.reset()
    for _ in range(3):
        obs = env.step(controller_actions(params, obs, spec)).obs
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        obs = env.step(controller_actions(params, obs, spec)).obs
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def real_rates(num_envs: int, steps: int) -> tuple[float, float]:
    """(bare ViZDoom steps/s with random actions, full V+M+C agent steps/s), both batched."""
    from worldmodels.controller.policy import WorldModelPolicy
    from worldmodels.controller.rollout import RolloutEngine
    from worldmodels.envs import make_vec_env
    from worldmodels.vision.vae import ConvVAE

    rng = np.random.default_rng(0)
    with make_vec_env("doom", num_envs=num_envs, max_steps=2100) as env:
        env.reset(seeds=list(range(num_envs)))
        done, start = 0, time.perf_counter()
        while done < steps:
            result = env.step(rng.uniform(-1, 1, (num_envs, 1)))
            done += num_envs
            ended = result.terminated | result.truncated
            if ended.any():
                env.reset(mask=ended, seeds=[None] * num_envs)
        bare = done / (time.perf_counter() - start)
        torch.manual_seed(0)
        spec = ControllerSpec.doom()
        policy = WorldModelPolicy(
            ConvVAE(64), doom_m("cpu"), spec, "cpu", preprocess=env.preprocess
        )
        engine = RolloutEngine(policy, env)
        params = rng.standard_normal((1, spec.num_params)) * 0.1
        jobs = [(0, s) for s in range(num_envs)]
        result = engine.run(params, jobs)
        agent = result.steps_per_second
    return bare, agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="dream steps per batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 4096])
    parser.add_argument("--real-steps", type=int, default=400)
    parser.add_argument("--num-envs", type=int, default=8, help="real Doom games at once")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"M (paper count): {paper_parameter_count(doom_m('cpu')):,} parameters")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        for batch in args.batches:
            rate = dream_rate(device, batch, args.steps)
            print(f"dream  {name:>24} batch {batch:>5}: {rate:>10,.0f} dream steps/s")
    bare, agent = real_rates(args.num_envs, args.real_steps)
    print(f"real   ViZDoom TakeCover, {args.num_envs} games, random actions: {bare:,.0f} steps/s")
    print(f"real   ViZDoom TakeCover, {args.num_envs} games, V + M + C agent: {agent:,.0f} steps/s")


if __name__ == "__main__":
    main()
