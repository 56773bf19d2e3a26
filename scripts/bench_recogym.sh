#!/usr/bin/env bash
# Throughput of reco-gym-v1 with a random agent: the Rust port (`recogym bench`, one thread)
# against the Python RecoGym 0.1.3.0 (scripts/recogym_py/bench.py: recogym's own env and
# RandomAgent in the standard env.reset()/env.step() loop, one process), at 10 and 1000
# products. The rate compared is bandit steps (recommendations answered) per second, which
# does not depend on how many users run, so Python runs fewer users than Rust to keep the run
# short; both exclude setup (world drawing, numba compilation). Each side runs
# RECOGYM_BENCH_ROUNDS times, alternately, and the best rate counts. Prints a table and writes
# target/bench/recogym.json {"10": {"rust": r, "python": p, "ratio": rust/python}, "1000": ...}
# plus the raw runs in target/bench/recogym-runs.jsonl. Asserts nothing (the goal is >= 100x).
#
# Environment:
#   RECOGYM_BENCH_RUST_USERS    users per Rust run (default 20000)
#   RECOGYM_BENCH_PYTHON_USERS  users per Python run (default 400, about 2-3 s)
#   RECOGYM_BENCH_ROUNDS        alternating rounds per side and size (default 2)
#   RECOGYM_BENCH_SEED          env random_seed (default 42)
#   CARGO_TARGET_DIR            where cargo builds (default target)
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
[[ $# -eq 0 ]] || { echo "bench_recogym.sh: no arguments expected (try --help)" >&2; exit 2; }

cd "$(dirname "$0")/.."
RUST_USERS=${RECOGYM_BENCH_RUST_USERS:-20000}
PY_USERS=${RECOGYM_BENCH_PYTHON_USERS:-400}
ROUNDS=${RECOGYM_BENCH_ROUNDS:-2}
SEED=${RECOGYM_BENCH_SEED:-42}
out=target/bench
mkdir -p "$out"

py=$(scripts/recogym_py/setup.sh)
echo "==> building recogym (release)" >&2
cargo build --release --locked -p recogym --bin recogym
bin=${CARGO_TARGET_DIR:-target}/release/recogym

runs=$out/recogym-runs.jsonl
: > "$runs"
for products in 10 1000; do
  for round in $(seq "$ROUNDS"); do
    echo "==> recogym bench: $products products, round $round of $ROUNDS" >&2
    "$bin" bench --products "$products" --users "$RUST_USERS" --seed "$SEED" \
      | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["impl"]="rust"; print(json.dumps(r))' >> "$runs"
    "$py" scripts/recogym_py/bench.py --products "$products" --users "$PY_USERS" --seed "$SEED" \
      | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["impl"]="python"; print(json.dumps(r))' >> "$runs"
  done
done

python3 - "$runs" "$out/recogym.json" << 'PYEOF'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
report = {}
print(f"\n{'products':>8} {'rust steps/s':>14} {'python steps/s':>15} {'ratio':>9}   users (rust / python), steps per user")
for products in (10, 1000):
    side = lambda impl: [r for r in runs if r["products"] == products and r["impl"] == impl]
    best = lambda rr: max(rr, key=lambda r: r["bandit_steps_per_s"])
    rs, py = best(side("rust")), best(side("python"))
    ratio = rs["bandit_steps_per_s"] / py["bandit_steps_per_s"]
    report[str(products)] = {"rust": rs["bandit_steps_per_s"], "python": py["bandit_steps_per_s"], "ratio": ratio}
    print(f"{products:8d} {rs['bandit_steps_per_s']:14,.0f} {py['bandit_steps_per_s']:15,.0f} {ratio:8.1f}x   "
          f"{rs['users']} / {py['users']}, {rs['bandit_steps'] / rs['users']:.1f} / {py['bandit_steps'] / py['users']:.1f}")
print("(bandit steps per second, one thread / one process, best of the rounds; goal: ratio >= 100x)")
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(f"wrote {sys.argv[2]}")
PYEOF
