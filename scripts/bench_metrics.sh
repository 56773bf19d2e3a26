#!/usr/bin/env bash
# `make bench`, part (h): what the Prometheus metrics cost the step loop. The same run (random
# policy, one agent, 256 concurrent episodes, BENCH_EPISODES episodes through Kafka) with
# metrics off and on, PAIRS times in alternating order so that drift of the machine and warm-up
# hit both alike; on:
# env-svc and agent-svc serve /metrics and the stack's Prometheus scrapes them every 2 s.
# Prints steps per second per run, the medians and their ratio; writes target/bench/metrics.json.
# Then the same pairs in memory (streamrec-sim memory, MEMORY_EPISODES episodes).
#   BENCH_EPISODES=4000 MEMORY_EPISODES=20000 PAIRS=6 scripts/bench_metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
out=target/bench
mkdir -p "$out"
BENCH_EPISODES=${BENCH_EPISODES:-4000}
PAIRS=${PAIRS:-6}
MEMORY_EPISODES=${MEMORY_EPISODES:-20000}
if [[ -z ${bin:-} ]]; then
  scripts/libtorch.sh
  cargo build --release --locked -p env-svc -p agent-svc
  bin=${CARGO_TARGET_DIR:-target}/release
  deploy/local/stack.sh up
fi
source scripts/bench_lib.sh

echo "==> (h) metrics off vs on: steps per second, $PAIRS pairs of $BENCH_EPISODES episodes, 256 concurrent, alternating order"
off() { METRICS_PORT="" kafka_run "metrics-off-$1" "$out/metrics-off-$1.json" --episodes "$BENCH_EPISODES" --concurrency 256; }
on() {
  METRICS_PORT=${BENCH_METRICS_PORT:-9430} kafka_run "metrics-on-$1" "$out/metrics-on-$1.json" \
    --episodes "$BENCH_EPISODES" --concurrency 256
}
# The order alternates (off then on, on then off): a run that follows another starts on a
# warmer cluster, which would otherwise favour one side.
for pair in $(seq 1 "$PAIRS"); do
  if ((pair % 2)); then off "$pair"; on "$pair"; else on "$pair"; off "$pair"; fi
done

# The same in one process without a broker (`streamrec-sim memory`): CPU-bound, the step loop's
# own cost, where the metrics' share is largest; on: its /metrics scraped by Prometheus.
mem() { # off|on pair
  local flags=() targets_file=""
  if [[ $1 == on ]]; then
    local addr="127.0.0.1:${BENCH_METRICS_PORT:-9430}"
    flags=(--metrics-addr "$addr")
    targets_file=${STREAMREC_RUN:-$CACHE/run}/prometheus/targets/bench-metrics-memory.json
    mkdir -p "$(dirname "$targets_file")"
    echo "[{\"targets\": [\"$addr\"], \"labels\": {\"process\": \"streamrec-sim\"}}]" > "$targets_file"
  fi
  "$bin/streamrec-sim" memory --quiet --policy random --episodes "$MEMORY_EPISODES" --concurrency 256 \
    --summary-json "$out/metrics-memory-$1-$2.json" "${flags[@]}" > "$out/metrics-memory-$1-$2.log" 2>&1
  [[ -z $targets_file ]] || rm -f "$targets_file"
}
echo "    and in memory: $PAIRS pairs of $MEMORY_EPISODES episodes"
for pair in $(seq 1 "$PAIRS"); do
  if ((pair % 2)); then mem off "$pair"; mem on "$pair"; else mem on "$pair"; mem off "$pair"; fi
done
python3 - "$out" "$PAIRS" "$BENCH_EPISODES" "$MEMORY_EPISODES" <<'PY'
import json, statistics, sys
out, pairs, episodes, mem_episodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rate = lambda f: json.load(open(f"{out}/{f}"))["steps_per_s"]
def side(fmt):
    off = [rate(fmt.format("off", i)) for i in range(1, pairs + 1)]
    on = [rate(fmt.format("on", i)) for i in range(1, pairs + 1)]
    ratios = [b / a for a, b in zip(off, on)]
    return {
        "steps_per_second_off": off,
        "steps_per_second_on": on,
        "median_off": statistics.median(off),
        "median_on": statistics.median(on),
        "ratio_on_over_off": statistics.median(on) / statistics.median(off),
        "pair_ratios": ratios,
        "median_pair_ratio": statistics.median(ratios),
    }
report = {
    "command": f"BENCH_EPISODES={episodes} MEMORY_EPISODES={mem_episodes} PAIRS={pairs} scripts/bench_metrics.sh",
    "settings": "random policy, 1 agent, 256 concurrent episodes; pairs in alternating order; "
    "on: the processes serve /metrics, scraped every 2 s by the stack's Prometheus",
    "kafka": side("metrics-{}-{}.json"),
    "memory": side("metrics-memory-{}-{}.json"),
}
json.dump(report, open(f"{out}/metrics.json", "w"), indent=2)
for name in ("kafka", "memory"):
    r = report[name]
    for i, (a, b) in enumerate(zip(r["steps_per_second_off"], r["steps_per_second_on"]), 1):
        print(f"    {name:6} pair {i}: off {a:8.0f} steps/s   on {b:8.0f} steps/s   on/off {b / a:5.3f}")
    print(f"    {name:6} median: off {r['median_off']:.0f}, on {r['median_on']:.0f} steps/s; median of the pairs' on/off {r['median_pair_ratio']:.3f} (goal: >= 0.97)")
PY
