#!/usr/bin/env python3
"""Cross-check the point estimates of `agent-svc ope` against Open Bandit Pipeline (obp 0.5.7).

usage: crosscheck.py [--tolerance T] [--json OUT] EXPORT.json [EXPORT2.json ...]

Each EXPORT.json is written by `agent-svc ope`:
  {"env_id": str, "target": str, "n": N, "k": K,
   "action": [int]*N, "reward": [float]*N, "pscore": [float]*N,
   "action_dist": [[float]*K]*N, "q_hat": [[float]*K]*N,
   "estimates": {"ipw": float, "snipw": float, "dm": float, "dr": float}}
pscore is the logging policy's probability of the logged action, action_dist the target
policy's probability of every action (rows sum to 1), q_hat the reward model's prediction for
every action. OBP's OffPolicyEvaluation runs InverseProbabilityWeighting,
SelfNormalizedInverseProbabilityWeighting, DirectMethod and DoublyRobust with their default
settings (no clipping; position None, context None) on action_dist[:, :, None] and
q_hat[:, :, None], and each of our estimates is compared with OBP's:
  relative difference = |ours - obp| / max(|obp|, 1e-12), which must be <= T (default 1e-6).

Prints one table per file. Exit status: 0 all within tolerance, 1 some estimate differs by more
than T (or is not a number), 2 an input file is unreadable or malformed (the other files are
still compared). --json OUT writes the comparison as JSON.

Run it with the obp venv's python (scripts/obp/setup.sh prints its path), or through
scripts/ope_obp.sh.
"""
import argparse
import json
import math
import os
import sys
import warnings

ESTIMATORS = ("ipw", "snipw", "dm", "dr")
REL_FLOOR = 1e-12


class InputError(Exception):
    pass


def load_export(path, np):
    """Reads and validates one export file; returns a dict of numpy arrays and metadata."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON: {e}")
    if not isinstance(doc, dict):
        raise InputError(f"the top level is a JSON {type(doc).__name__}, not an object")
    missing = [key for key in ("n", "k", "action", "reward", "pscore", "action_dist", "q_hat",
                               "estimates") if key not in doc]
    if missing:
        raise InputError(f"missing key(s): {', '.join(missing)}")

    def count(key):
        v = doc[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"'{key}' must be a positive integer, got {v!r}")
        return v

    n, k = count("n"), count("k")

    def array(key, shape):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # ragged lists -> error, not an object array
                a = np.asarray(doc[key], dtype=float)
        except (TypeError, ValueError, Warning) as e:
            raise InputError(f"'{key}' is not a numeric array of shape {shape}: {e}")
        if a.shape != shape:
            raise InputError(f"'{key}' has shape {a.shape}, expected {shape} (n={n}, k={k})")
        bad = np.flatnonzero(~np.isfinite(a.ravel()))
        if bad.size:
            idx = np.unravel_index(bad[0], shape)
            raise InputError(f"'{key}' has {bad.size} non-finite value(s), the first at "
                             f"{list(map(int, idx))}: {a[idx]}")
        return a

    raw_action = doc["action"]
    if not isinstance(raw_action, list) or len(raw_action) != n:
        raise InputError(f"'action' must be a list of {n} integers")
    for i, v in enumerate(raw_action):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < k:
            raise InputError(f"'action'[{i}] = {v!r} is not an integer in [0, {k})")
    action = np.asarray(raw_action, dtype=np.int64)
    reward = array("reward", (n,))
    pscore = array("pscore", (n,))
    bad = np.flatnonzero((pscore <= 0) | (pscore > 1))
    if bad.size:
        raise InputError(f"'pscore' must lie in (0, 1]: {bad.size} value(s) do not, the first "
                         f"at [{bad[0]}]: {pscore[bad[0]]!r}")
    action_dist = array("action_dist", (n, k))
    if (action_dist < 0).any():
        i, j = np.argwhere(action_dist < 0)[0]
        raise InputError(f"'action_dist'[{i}][{j}] = {action_dist[i, j]!r} is negative")
    sums = action_dist.sum(axis=1)
    off = np.flatnonzero(~np.isclose(sums, 1.0))  # the test OBP applies (np.allclose)
    if off.size:
        raise InputError(f"'action_dist' rows must sum to 1: {off.size} row(s) do not, the "
                         f"first is row {off[0]} (sum {sums[off[0]]!r})")
    q_hat = array("q_hat", (n, k))

    est = doc["estimates"]
    if not isinstance(est, dict):
        raise InputError("'estimates' must be an object")
    missing = [e for e in ESTIMATORS if e not in est]
    if missing:
        raise InputError(f"'estimates' lacks {', '.join(missing)}")
    ours = {}
    for e in ESTIMATORS:
        v = est[e]
        if v is None:  # serde_json writes NaN/inf as null: a comparison failure, not bad input
            ours[e] = float("nan")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"'estimates'.{e} = {v!r} is not a number")
        else:
            ours[e] = float(v)
    return {"env_id": str(doc.get("env_id", "?")), "target": str(doc.get("target", "?")),
            "n": n, "k": k, "action": action, "reward": reward, "pscore": pscore,
            "action_dist": action_dist, "q_hat": q_hat, "ours": ours}


def import_obp():
    os.environ.setdefault("TQDM_DISABLE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time deprecation noise of the 2022 stack
        import obp
        from obp.ope import (OffPolicyEvaluation, InverseProbabilityWeighting,
                             SelfNormalizedInverseProbabilityWeighting, DirectMethod,
                             DoublyRobust)
    return obp.__version__, OffPolicyEvaluation, [
        InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting(),
        DirectMethod(), DoublyRobust()]


def obp_estimates(d, OffPolicyEvaluation, estimators):
    bandit_feedback = {"n_rounds": d["n"], "n_actions": d["k"], "action": d["action"],
                       "reward": d["reward"], "pscore": d["pscore"], "position": None,
                       "context": None}
    ope = OffPolicyEvaluation(bandit_feedback=bandit_feedback, ope_estimators=estimators)
    est = ope.estimate_policy_values(action_dist=d["action_dist"][:, :, None],
                                     estimated_rewards_by_reg_model=d["q_hat"][:, :, None])
    return {e: float(est[e]) for e in ESTIMATORS}


def fmt(x, nan="nan"):
    return nan if math.isnan(x) else f"{x:.12g}"


def json_num(x):
    return x if math.isfinite(x) else None


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="crosscheck.py",
        description="Compare agent-svc ope's IPW/SNIPW/DM/DR estimates with OBP's.",
        epilog="Exit status: 0 all within tolerance, 1 a difference above it, 2 bad input.")
    ap.add_argument("exports", nargs="+", metavar="EXPORT.json")
    ap.add_argument("--tolerance", type=float, default=1e-6,
                    help="largest allowed relative difference (default 1e-6)")
    ap.add_argument("--json", metavar="OUT", help="write the comparison to OUT as JSON")
    args = ap.parse_args(argv)
    if not args.tolerance >= 0:
        ap.error("--tolerance must be a non-negative number")

    import numpy as np

    loaded = []
    for path in args.exports:
        try:
            loaded.append((path, load_export(path, np), None))
        except InputError as e:
            loaded.append((path, None, str(e)))

    obp_version, OffPolicyEvaluation, estimators = None, None, None
    if any(d is not None for _, d, _ in loaded):
        obp_version, OffPolicyEvaluation, estimators = import_obp()

    report = {"obp_version": obp_version, "tolerance": args.tolerance, "files": []}
    n_bad_input = n_failed = n_compared = 0
    for idx, (path, d, err) in enumerate(loaded):
        if idx:
            print()
        print(f"== {path}")
        if d is not None:
            try:
                theirs = obp_estimates(d, OffPolicyEvaluation, estimators)
            except (ValueError, TypeError, RuntimeError) as e:
                d, err = None, f"OBP rejects the input: {type(e).__name__}: {e}"
        if d is None:
            n_bad_input += 1
            sys.stdout.flush()
            print(f"crosscheck.py: error: {path}: {err}", file=sys.stderr)
            print("unreadable input, not compared")
            report["files"].append({"path": path, "error": err, "ok": False})
            continue
        print(f"env_id: {d['env_id']}   target: {d['target']}   n: {d['n']}   k: {d['k']}")
        head = f"{'estimator':<10} {'ours':>20} {'obp':>20} {'rel_diff':>10}  verdict"
        print(head)
        print("-" * len(head))
        rows, file_ok = [], True
        for e in ESTIMATORS:
            ours, obp_v = d["ours"][e], theirs[e]
            rel = abs(ours - obp_v) / max(abs(obp_v), REL_FLOOR)
            ok = rel <= args.tolerance  # False for nan
            n_compared += 1
            if not ok:
                n_failed += 1
                file_ok = False
            print(f"{e:<10} {fmt(ours, 'null'):>20} {fmt(obp_v):>20} {rel:>10.2e}  "
                  f"{'ok' if ok else 'FAIL'}")
            rows.append({"estimator": e, "ours": json_num(ours), "obp": json_num(obp_v),
                         "rel_diff": json_num(rel), "ok": ok})
        report["files"].append({"path": path, "env_id": d["env_id"], "target": d["target"],
                                "n": d["n"], "k": d["k"], "ok": file_ok, "estimates": rows})

    print()
    summary = (f"crosscheck: {len(loaded)} file(s), {n_compared} estimate(s) compared, "
               f"{n_failed} outside tolerance {args.tolerance:g}")
    if n_bad_input:
        summary += f", {n_bad_input} unreadable"
    if obp_version:
        summary += f" (obp {obp_version})"
    print(summary)
    report["ok"] = n_failed == 0 and n_bad_input == 0
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
        except OSError as e:
            print(f"error: cannot write {args.json}: {e.strerror or e}", file=sys.stderr)
            return 2
    if n_bad_input:
        return 2
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
