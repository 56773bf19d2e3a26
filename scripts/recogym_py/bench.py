#!/usr/bin/env python3
"""Throughput of RecoGym 0.1.3.0's reco-gym-v1 with recogym's RandomAgent, single process.

Run with the venv made by scripts/recogym_py/setup.sh:

    $VENV/bin/python scripts/recogym_py/bench.py --products 10 --users 200 --seed 42

The standard online loop from recogym's README, per user:
    env.reset(user_id); obs, reward, done, _ = env.step(None)
    while not done: action = agent.act(obs, reward, done); obs, reward, done, _ = env.step(action['a'])
bandit_steps counts env.step(action) calls, organic_views the organic events in the returned
observations. Timed: only that loop (env creation, init_gym and numba's one-off compilation
of the click function, triggered beforehand on a scratch array, are not). Prints one JSON line:
{"products","users","bandit_steps","organic_views","seconds","bandit_steps_per_s"}.
"""
import argparse
import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rgload  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", type=int, default=10)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--env", action="append", metavar="KEY=VALUE",
                    help="extra env_1_args override (repeatable)")
    a = ap.parse_args()
    if a.products < 1 or a.users < 1:
        ap.error("--products and --users must be >= 1")

    os.environ["TQDM_DISABLE"] = "1"
    recogym, gym, _ = rgload.load()
    import numpy as np
    from recogym import Configuration
    from recogym.agents import RandomAgent, random_args
    from recogym.envs import reco_env_v1

    extra = rgload.parse_env_overrides(a.env, recogym.env_1_args)
    env, args = rgload.make_env(gym, recogym, a.products, a.seed, extra)
    agent = RandomAgent(Configuration({**random_args, **args}))
    reco_env_v1.ff(np.zeros(a.products))  # numba JIT compile outside the timed loop

    bandit_steps = 0
    organic_views = 0
    t0 = time.perf_counter()
    for user in range(a.users):
        env.reset(user)
        observation, reward, done, _ = env.step(None)
        organic_views += len(observation.sessions())
        while not done:
            action = agent.act(observation, reward, done)
            observation, reward, done, _ = env.step(action["a"])
            bandit_steps += 1
            organic_views += len(observation.sessions())
    seconds = time.perf_counter() - t0

    print(json.dumps({
        "products": a.products,
        "users": a.users,
        "bandit_steps": bandit_steps,
        "organic_views": organic_views,
        "seconds": seconds,
        "bandit_steps_per_s": bandit_steps / seconds if seconds > 0 else None,
    }))


if __name__ == "__main__":
    main()
