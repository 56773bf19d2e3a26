#!/usr/bin/env python3
"""RecoGym 0.1.3.0's own A/B protocol on reco-gym-v1, for the fidelity check of the Rust port.

Run with the venv made by scripts/recogym_py/setup.sh:

    $VENV/bin/python scripts/recogym_py/ab.py --agent random --agent organic-count \
        --products 10 --users 2000 --train-users 1000 --seed 42 --out target/recogym/py.json

What runs is recogym's evaluation entry point `recogym.gather_agent_stats` (evaluate_agent.py)
with user_samples=(M,), num_online_users=N, num_epochs=1, exactly as its notebooks call it:

  * env = gym.make('reco-gym-v1'); gather_agent_stats deep-copies it and calls
    init_gym({**env_1_args, num_products: P, random_seed: S, <--env overrides>});
  * each agent is built by recogym's build_agents: CTOR(Configuration({**default_args,
    **env_args})), i.e. RandomAgent(random_args) / OrganicCount(organic_count_args) with
    num_products and random_seed taken from the env args;
  * per agent, recogym.test_agent(deepcopy(env), deepcopy(agent), M, N, K) (bench_agents.py):
    train on K organic-only users, then on M users logged by the env's own uniform-random
    policy (step_offline), then evaluate with env.generate_logs(N, agent) on the same env (its
    RNG continues); every bandit row of those logs counts: successes = clicks, failures = the
    rest. Note generate_logs also logs one extra bandit row per user, taken when the user
    leaves, with reward 0, so impressions = bandit steps + N.
  * CTR and its 95% interval: the Beta(successes + 1, failures + 1) posterior (uniform prior)
    median and its 2.5% / 97.5% quantiles, scipy.stats.beta.ppf(q, s + 1, f + 1), q = 0.5,
    0.025, 0.975 (AgentStats.Q0_500 / Q0_025 / Q0_975).

gather_agent_stats returns only the three quantiles; "impressions" is successes + failures of
the same run, read by wrapping recogym.bench_agents._collect_stats (which test_agent calls)
with a function that records its return value and passes it on unchanged.

--dump-world FILE also writes the product embeddings this seed gives (Gamma, mu_organic, from
a separate gym.make + init_gym; the evaluation is unaffected), so that a port with another RNG
can be run on the same world.

Output (also printed on stdout): {"settings": {env args used}, "agents": {"random": {"ctr",
"lo", "hi", "users", "impressions"}, ...}, "seconds": wall time of gather_agent_stats}.
"""
import argparse
import contextlib
import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rgload  # noqa: E402

AGENTS = ("random", "organic-count")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", action="append", choices=AGENTS,
                    help="agent to evaluate (repeatable; default: both)")
    ap.add_argument("--products", type=int, default=10, help="num_products (default 10)")
    ap.add_argument("--users", type=int, default=2000, help="A/B (online) users N")
    ap.add_argument("--train-users", type=int, default=1000,
                    help="offline training users M (logged by the uniform-random policy)")
    ap.add_argument("--organic-train-users", type=int, default=100,
                    help="organic-only offline training users K before the M users "
                         "(recogym's default num_organic_offline_users=100)")
    ap.add_argument("--seed", type=int, default=42, help="env random_seed")
    ap.add_argument("--env", action="append", metavar="KEY=VALUE",
                    help="extra env_1_args override, e.g. number_of_flips=5 (repeatable)")
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--dump-world", metavar="FILE",
                    help="also write the world recogym draws for these settings (a fresh "
                         "gym.make + init_gym, as gather_agent_stats does): JSON {num_products, "
                         "K, random_seed, gamma: P rows of K, mu_organic: P}, f64 exact")
    ap.add_argument("--progress", action="store_true", help="keep recogym's tqdm bars")
    a = ap.parse_args()
    agents = list(dict.fromkeys(a.agent or AGENTS))
    for name in ("products", "users", "train_users", "organic_train_users"):
        if getattr(a, name) < (1 if name in ("products", "users") else 0):
            ap.error(f"--{name.replace('_', '-')} out of range")

    if not a.progress:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads TQDM_* defaults at import
    recogym, gym, _ = rgload.load()
    import recogym.bench_agents as bench_agents
    from recogym import AgentStats, build_agent_init, env_1_args, gather_agent_stats
    from recogym.agents import OrganicCount, RandomAgent, organic_count_args, random_args

    ctors = {
        "random": (RandomAgent, random_args),
        "organic-count": (OrganicCount, organic_count_args),
    }
    extra = {
        "num_products": a.products,
        "random_seed": a.seed,
        **rgload.parse_env_overrides(a.env, env_1_args),
    }
    agents_init = {}
    for name in agents:
        agents_init.update(build_agent_init(name, *ctors[name]))

    # Observe (not change) what test_agent counts: one _collect_stats call per agent, in order.
    counted = []
    inner = bench_agents._collect_stats

    def counting_collect_stats(args):
        result = inner(args)
        counted.append((result[AgentStats.SUCCESSES], result[AgentStats.FAILURES]))
        return result

    bench_agents._collect_stats = counting_collect_stats

    if a.dump_world:
        world_env = gym.make("reco-gym-v1")
        world_env.init_gym({**env_1_args, **extra})
        world = {
            "num_products": a.products,
            "K": int(world_env.config.K),
            "random_seed": a.seed,
            "gamma": world_env.Gamma.tolist(),
            "mu_organic": world_env.mu_organic.ravel().tolist(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(a.dump_world)), exist_ok=True)
        with open(a.dump_world, "w") as fh:
            json.dump(world, fh)

    env = gym.make("reco-gym-v1")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # recogym prints progress lines on stdout
        stats = gather_agent_stats(
            env,
            env_1_args,
            extra,
            agents_init,
            user_samples=(a.train_users,),
            num_online_users=a.users,
            num_epochs=1,
            epoch_with_random_reset=False,
            num_organic_offline_users=a.organic_train_users,
            with_cache=False,
        )
    seconds = time.perf_counter() - t0
    bench_agents._collect_stats = inner
    if len(counted) != len(agents):
        sys.exit(f"ab.py: expected {len(agents)} test_agent runs, saw {len(counted)}")

    out = {"settings": rgload.jsonable({**env_1_args, **extra}), "agents": {}, "seconds": seconds}
    for name, (succ, fail) in zip(agents, counted):
        q = stats[AgentStats.AGENTS][name]
        out["agents"][name] = {
            "ctr": float(q[AgentStats.Q0_500][0]),
            "lo": float(q[AgentStats.Q0_025][0]),
            "hi": float(q[AgentStats.Q0_975][0]),
            "users": a.users,
            "impressions": int(round(float(succ) + float(fail))),
        }
        print(f"ab.py: {name}: clicks {int(round(float(succ)))} of "
              f"{out['agents'][name]['impressions']} impressions", file=sys.stderr)
    text = json.dumps(out, indent=2)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
