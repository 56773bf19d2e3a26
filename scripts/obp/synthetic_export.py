#!/usr/bin/env python3
"""Write a synthetic export file in the format of `agent-svc ope` (the self-test input of
crosscheck.py; numpy only).

usage: synthetic_export.py OUT.json [--n 5000] [--k 10] [--seed 0] [--perturb EST=REL]

Logging policy uniform over K actions (pscore = 1/K); rewards Bernoulli(sigmoid(x . theta_a)) for
a 5-dimensional context x; q_hat = sigmoid(0.8 x . theta_a + 0.3), a deliberately misspecified
reward model; target policy 0.1-greedy on q_hat. The estimates are the plain numpy formulas of
OBP's IPW, SNIPW, DM and DR for a single slot, which OBP reproduces to float precision:
  w = action_dist[i, a_i] / pscore_i,  dm_i = sum_a action_dist[i, a] q_hat[i, a]
  ipw = mean(w r), snipw = sum(w r) / sum(w), dm = mean(dm_i),
  dr = mean(dm_i + w (r - q_hat[i, a_i]))
--perturb EST=REL multiplies estimate EST (ipw, snipw, dm or dr) by (1 + REL), so that
crosscheck.py must flag it when REL exceeds its tolerance.
"""
import argparse
import json

import numpy as np


def main():
    ap = argparse.ArgumentParser(prog="synthetic_export.py",
                                 description="Write a synthetic agent-svc ope export file.")
    ap.add_argument("out", metavar="OUT.json")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--perturb", metavar="EST=REL",
                    help="multiply estimate EST by (1 + REL), e.g. dr=1e-4")
    args = ap.parse_args()
    if args.n < 1 or args.k < 2:
        ap.error("need --n >= 1 and --k >= 2")

    n, k, d, eps = args.n, args.k, 5, 0.1
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(n, d))
    theta = rng.normal(scale=0.7, size=(k, d))
    logits = x @ theta.T                                   # (n, k)
    expected = 1.0 / (1.0 + np.exp(-logits))

    action = rng.integers(0, k, size=n)                    # uniform logging policy
    pscore = np.full(n, 1.0 / k)
    reward = (rng.random(n) < expected[np.arange(n), action]).astype(float)

    q_hat = 1.0 / (1.0 + np.exp(-(0.8 * logits + 0.3)))    # misspecified reward model
    action_dist = np.full((n, k), eps / k)                 # eps-greedy on q_hat
    action_dist[np.arange(n), q_hat.argmax(axis=1)] += 1.0 - eps

    w = action_dist[np.arange(n), action] / pscore
    dm = (action_dist * q_hat).sum(axis=1)
    est = {"ipw": np.mean(w * reward), "snipw": np.sum(w * reward) / np.sum(w),
           "dm": dm.mean(), "dr": np.mean(dm + w * (reward - q_hat[np.arange(n), action]))}
    est = {key: float(v) for key, v in est.items()}
    if args.perturb:
        name, _, rel = args.perturb.partition("=")
        if name not in est:
            ap.error(f"--perturb: unknown estimator '{name}' (ipw, snipw, dm, dr)")
        try:
            est[name] *= 1.0 + float(rel)
        except ValueError:
            ap.error(f"--perturb: '{rel}' is not a number")

    doc = {"env_id": f"synthetic-n{n}-k{k}-seed{args.seed}",
           "target": f"{eps:g}-greedy on q_hat (synthetic)", "n": n, "k": k,
           "action": action.tolist(), "reward": reward.tolist(), "pscore": pscore.tolist(),
           "action_dist": action_dist.tolist(), "q_hat": q_hat.tolist(), "estimates": est}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.write("\n")


if __name__ == "__main__":
    main()
