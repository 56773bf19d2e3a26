#!/usr/bin/env bash
# DQN benchmark: learner updates per second (batch 64) and inference latency (a batch of 64) of
# the default network (embedding 64, BiLSTM 64/64/32, dense 64/32, Q over 1,289 actions, 32
# tokens per state) in Rust through tch (agent-svc/examples/bench_dqn.rs) and in PyTorch
# (scripts/bench_dqn.py), same libtorch 2.13.0, same intra-op thread count, run alternately in
# this script. Cases: the worst case, token ids over the whole 20,000-word vocabulary; `:314`,
# ids from the 314 words the agent sees on the sample data (the Rust learner's Adam then skips
# the embedding rows no id reached, an exact shortcut; torch's Adam updates the whole table);
# and the `mlp` option, where per-call overhead weighs more. Prints a table and writes
# target/bench/dqn.json; asserts nothing.
#   DQN_BENCH_THREADS  intra-op threads of both sides (default 1: on a shared 2-core machine,
#                      2 OpenMP threads spin against other processes and the numbers go wild)
#   DQN_BENCH_SECONDS  seconds of updates per run (default 5)
#   DQN_BENCH_RUNS     timed inference calls per run (default 300)
#   DQN_BENCH_ROUNDS   alternating rounds per side and case; the best round counts (default 2)
#   DQN_BENCH_CASES    net[:words in use] (default "lstm lstm:314 mlp mlp:314")
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${DQN_BENCH_THREADS:-1}
SECS=${DQN_BENCH_SECONDS:-5}
RUNS=${DQN_BENCH_RUNS:-300}
ROUNDS=${DQN_BENCH_ROUNDS:-2}
CASES=${DQN_BENCH_CASES:-lstm lstm:314 mlp mlp:314}
VENV=${STREAMREC_CACHE:-$HOME/.cache/streamrec}/torch-venv
out=target/bench
mkdir -p "$out"

scripts/libtorch.sh --python
cargo build --release --locked -p agent-svc --example bench_dqn
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_dqn

runs="$out/dqn-runs.jsonl"
: > "$runs"
for case in $CASES; do
  net=${case%%:*}
  for round in $(seq "$ROUNDS"); do
    echo "==> dqn bench: $case, round $round of $ROUNDS, $THREADS thread(s)" >&2
    args=(--threads "$THREADS" --seconds "$SECS" --runs "$RUNS" --net "$net")
    [[ $case == *:* ]] && args+=(--active-vocab "${case#*:}")
    "$VENV/bin/python" scripts/bench_dqn.py "${args[@]}" >> "$runs"
    "$bin" "${args[@]}" >> "$runs"
  done
done

python3 - "$runs" "$out/dqn.json" << 'PYEOF'
import json, os, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
report = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}, "cases": {}, "runs": runs}
def case(r):
    return r["net"] if r["active_vocab"] == r["vocab"] else f'{r["net"]}:{r["active_vocab"]}'
print(f"\n{'case':9} {'what':34} {'rust':>10} {'python':>10} {'rust/python':>12}")
for net in dict.fromkeys(case(r) for r in runs):
    side = lambda impl: [r for r in runs if case(r) == net and r["impl"] == impl]
    rs, py = side("rust"), side("python")
    best_u = lambda rr: max(r["updates_per_s"] for r in rr)
    best_i = lambda rr: min(rr, key=lambda r: r["infer_ms"]["median"])["infer_ms"]
    ru, pu, ri, pi = best_u(rs), best_u(py), best_i(rs), best_i(py)
    entry = {
        "threads": rs[0]["threads"], "batch": rs[0]["batch"], "tokens": rs[0]["tokens"], "n_actions": rs[0]["n_actions"],
        "vocab": rs[0]["vocab"], "active_vocab": rs[0]["active_vocab"],
        "updates_per_s": {"rust": ru, "python": pu, "ratio": ru / pu},
        "infer_ms_median": {"rust": ri["median"], "python": pi["median"], "ratio": pi["median"] / ri["median"]},
        "infer_ms_p99": {"rust": ri["p99"], "python": pi["p99"], "ratio": pi["p99"] / ri["p99"]},
        "torch": py[0].get("torch"), "rounds": len(rs),
    }
    report["cases"][net] = entry
    print(f"{net:9} {'learner updates/s (batch 64)':34} {ru:10.1f} {pu:10.1f} {ru / pu:11.2f}x")
    print(f"{net:9} {'inference, batch 64, median ms':34} {ri['median']:10.3f} {pi['median']:10.3f} {pi['median'] / ri['median']:11.2f}x")
    print(f"{net:9} {'inference, batch 64, p99 ms':34} {ri['p99']:10.3f} {pi['p99']:10.3f} {pi['p99'] / ri['p99']:11.2f}x")
print("(ratio > 1: Rust faster; best of the rounds on each side; lstm:314 = ids from 314 words in use)")
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(f"wrote {sys.argv[2]}")
PYEOF
