#!/usr/bin/env bash
# The DQN at the full catalogue's size: the network of `--dqn-preset fashion` (MLP state tower,
# tower head of width 64, sparse wide table) over 186,637 items (every product of the 2018
# metadata), in Rust through tch (agent-svc/examples/bench_tower.rs) and the same network and
# step in PyTorch (scripts/bench_tower.py), same libtorch, same thread count, run alternately.
# Measures learner updates per second (batch 64, full-feedback rows with 10 positives, 256 shared
# negatives), inference latency of a batch of 64 (the whole catalogue scored block by block
# against the cached item matrix, each block's best kept; and the whole matrix and its argmax,
# as top-k evaluation computes it), the item matrix's rebuild (once per
# weight snapshot) and the process's peak RSS. Then, Rust only, the candidate step of
# `--dqn-search ivf` against that exact scan: latency, index build and refresh, recall@1 and @10.
# Prints the tables and writes target/bench/tower.json; asserts nothing.
#   TOWER_BENCH_THREADS  intra-op threads of both sides (default 1)
#   TOWER_BENCH_SECONDS  seconds of updates per run (default 10)
#   TOWER_BENCH_RUNS     timed inference calls per run (default 200)
#   TOWER_BENCH_ROUNDS   alternating rounds per side; the best round counts (default 2)
#   TOWER_BENCH_ITEMS    catalogue size (default 186637)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${TOWER_BENCH_THREADS:-1}
SECS=${TOWER_BENCH_SECONDS:-10}
RUNS=${TOWER_BENCH_RUNS:-200}
ROUNDS=${TOWER_BENCH_ROUNDS:-2}
ITEMS=${TOWER_BENCH_ITEMS:-186637}
VENV=${STREAMREC_CACHE:-$HOME/.cache/streamrec}/torch-venv
out=target/bench
mkdir -p "$out"

scripts/libtorch.sh --python
cargo build --release --locked -p agent-svc --example bench_tower
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_tower

runs="$out/tower-runs.jsonl"
: > "$runs"
args=(--threads "$THREADS" --seconds "$SECS" --runs "$RUNS" --n-actions "$ITEMS")
for round in $(seq "$ROUNDS"); do
  echo "==> tower bench: $ITEMS items, round $round of $ROUNDS, $THREADS thread(s)" >&2
  "$VENV/bin/python" scripts/bench_tower.py "${args[@]}" >> "$runs"
  "$bin" "${args[@]}" >> "$runs"
done

python3 - "$runs" "$out/tower.json" << 'PYEOF'
import json, os, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
side = lambda impl: [r for r in runs if r["impl"] == impl]
rs, py = side("rust"), side("python")
best_u = lambda rr: max(r["updates_per_s"] for r in rr)
best_i = lambda rr: min(rr, key=lambda r: r["infer_ms"]["median"])["infer_ms"]
low = lambda rr, k: min(r[k] for r in rr)
ru, pu, ri, pi = best_u(rs), best_u(py), best_i(rs), best_i(py)
rows = [
    ("learner updates/s (batch 64)", ru, pu, ru / pu),
    ("inference, batch 64, median ms", ri["median"], pi["median"], pi["median"] / ri["median"]),
    ("inference, batch 64, p99 ms", ri["p99"], pi["p99"], pi["p99"] / ri["p99"]),
    ("whole [64, n] matrix, median ms", min(r["infer_full_matrix_ms"]["median"] for r in rs),
     min(r["infer_full_matrix_ms"]["median"] for r in py),
     min(r["infer_full_matrix_ms"]["median"] for r in py) / min(r["infer_full_matrix_ms"]["median"] for r in rs)),
    ("item matrix rebuild ms", low(rs, "item_matrix_rebuild_ms"), low(py, "item_matrix_rebuild_ms"),
     low(py, "item_matrix_rebuild_ms") / low(rs, "item_matrix_rebuild_ms")),
    ("peak RSS MiB", low(rs, "peak_rss_mib"), low(py, "peak_rss_mib"), low(py, "peak_rss_mib") / low(rs, "peak_rss_mib")),
]
print(f"\n{rs[0]['n_actions']:,} items, {rs[0]['threads']} thread(s), load {os.getloadavg()[0]:.2f}")
print(f"{'what':32} {'rust':>10} {'python':>10} {'ratio':>8}")
for what, r, p, ratio in rows:
    print(f"{what:32} {r:10.1f} {p:10.1f} {ratio:7.2f}x")
print("(ratio > 1: Rust better; best of the rounds on each side)")
# The candidate step (Rust only), against the exact block-by-block scan of the same runs.
best_rs = min(rs, key=lambda r: r["infer_ms"]["median"])
if "ivf" in best_rs:
    x = best_rs["ivf"]
    print(f"\ncandidate search --dqn-search ivf (Rust, the run of the best exact median): {x['lists']} lists, "
          f"{x['popular']} popular; index build (k-means) {x['build_ms']:.0f} ms, refresh per snapshot {x['refresh_ms']:.0f} ms")
    print("recall against the exact scan on the bench's barely trained vectors (a floor; make eval measures real episodes)")
    print(f"{'probe':>5} {'items/state':>11} {'median ms':>10} {'p99 ms':>8} {'exact p99/ivf p99':>18} {'recall@1':>9} {'recall@10':>10}")
    for p in x["probes"]:
        print(f"{p['probe']:5d} {p['probed_items_per_state']:11,.0f} {p['infer_ms']['median']:10.2f} {p['infer_ms']['p99']:8.2f} "
              f"{best_rs['infer_ms']['p99'] / p['infer_ms']['p99']:17.2f}x {p['recall_at_1']:9.3f} {p['recall_at_10']:10.3f}")
report = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
          "table": {w: {"rust": r, "python": p, "ratio": x} for w, r, p, x in rows}, "runs": runs}
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(f"wrote {sys.argv[2]}")
PYEOF
