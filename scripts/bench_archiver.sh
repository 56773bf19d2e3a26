#!/usr/bin/env bash
# The archiver benchmark, run by `make bench` (scripts/bench.sh) or alone. In one script, against
# the same Cassandra node, at the same concurrency:
#   1. produce ARCHIVE_BENCH_MESSAGES messages (default 1,000,000; half states, half actions, sizes
#      as env-svc and agent-svc write them) to two fresh topics (6 partitions, RF 3);
#   2. `archiver run-once` copies them into a fresh keyspace: Kafka reads, decoding and schema
#      validation, writes, episode summaries, offset commits; rows per second from its summary;
#   3. the baseline: the same rows (regenerated in memory from the same seed) written by a plain
#      loop of the same prepared inserts, `buffer_unordered(concurrency)`, nothing else;
# and prints both rates and their ratio (goal: at least 0.8). Writes target/bench/archiver.json.
# The topics and keyspaces are dropped afterwards (KEEP=1 keeps them).
#   ARCHIVE_BENCH_MESSAGES=1000000 ARCHIVE_BENCH_CONCURRENCY=64 ARCHIVE_BENCH_BATCH=5000
set -euo pipefail
cd "$(dirname "$0")/.."

N=${ARCHIVE_BENCH_MESSAGES:-1000000}
C=${ARCHIVE_BENCH_CONCURRENCY:-64}
BATCH=${ARCHIVE_BENCH_BATCH:-5000}
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
CASSANDRA_PORT=${STACK_CASSANDRA_PORT:-9042}
out=target/bench
mkdir -p "$out"
t0=$SECONDS

cargo build --release --locked -p archiver --bin archiver --example archiver_bench
bin=${CARGO_TARGET_DIR:-target}/release
deploy/local/stack.sh is-up || deploy/local/stack.sh up

base="bench_archiver_$(date +%s)"
state="${base}_state" action="${base}_action" ks_run="${base}_run" ks_plain="${base}_plain"
cleanup() {
  [[ ${KEEP:-} == 1 ]] && return
  "$CACHE/venv/bin/cqlsh" 127.0.0.1 "$CASSANDRA_PORT" --request-timeout=120 \
    -e "DROP KEYSPACE IF EXISTS $ks_run; DROP KEYSPACE IF EXISTS $ks_plain" > /dev/null 2>&1 || true
  JAVA17=${JAVA17:-$(ls -d /usr/lib/jvm/java-17-openjdk-*/bin/java 2> /dev/null | head -n 1)} STREAMREC_CACHE=$CACHE \
    deploy/local/bin/kafka-topics --bootstrap-server 127.0.0.1:9092 --delete --topic "$state,$action" > /dev/null 2>&1 || true
}
trap cleanup EXIT

echo "==> archiver benchmark: $N messages, concurrency $C"
echo "--> producing to $state and $action"
"$bin/examples/archiver_bench" produce --messages "$N" --state-topic "$state" --action-topic "$action" \
  > "$out/archiver-produce.json"

echo "--> archiver run-once into keyspace $ks_run"
"$bin/archiver" init --keyspace "$ks_run" > /dev/null
"$bin/archiver" run-once --no-progress --state-topic "$state" --action-topic "$action" --dead-letter-topic "" \
  --keyspace "$ks_run" --group-id "$base" --concurrency "$C" --batch-size "$BATCH" \
  --summary-json "$out/archiver-run.json" > "$out/archiver-run.log" 2>&1 \
  || { cat "$out/archiver-run.log" >&2; exit 1; }
# The archive is not needed any more; dropping it spares the baseline its compactions.
"$CACHE/venv/bin/cqlsh" 127.0.0.1 "$CASSANDRA_PORT" --request-timeout=120 -e "DROP KEYSPACE $ks_run" > /dev/null 2>&1 || true

echo "--> plain loop of prepared inserts into keyspace $ks_plain"
"$bin/examples/archiver_bench" baseline --messages "$N" --keyspace "$ks_plain" --concurrency "$C" \
  > "$out/archiver-baseline.json"

python3 - "$out" "$((SECONDS - t0))" << 'EOF'
import json, sys
out, script_s = sys.argv[1], int(sys.argv[2])
produce = json.load(open(f"{out}/archiver-produce.json"))
run = json.load(open(f"{out}/archiver-run.json"))
plain = json.load(open(f"{out}/archiver-baseline.json"))
rows = sum(run["rows"].values())
messages = sum(run["messages"].values())
report = {
    "messages": messages,
    "produced": produce["messages"],
    "produce_messages_per_second": round(produce["messages_per_second"]),
    "archiver": {"rows": rows, "seconds": round(run["duration_s"], 2), "rows_per_second": round(run["rows_per_second"]),
                 "outcome": run["outcome"]},
    "plain_inserts": {"rows": plain["rows"], "seconds": round(plain["seconds"], 2),
                      "rows_per_second": round(plain["rows_per_second"])},
    "concurrency": plain["concurrency"],
    "ratio": round(run["rows_per_second"] / plain["rows_per_second"], 3),
    "goal": 0.8,
    "script_seconds": script_s,
}
json.dump(report, open(f"{out}/archiver.json", "w"), indent=2)
a, p = report["archiver"], report["plain_inserts"]
print(f"\n| What | Rows | Seconds | Rows/s |\n|---|---|---|---|")
print(f"| archiver run-once ({messages:,} messages) | {a['rows']:,} | {a['seconds']} | {a['rows_per_second']:,} |")
print(f"| plain prepared inserts, concurrency {report['concurrency']} | {p['rows']:,} | {p['seconds']} | {p['rows_per_second']:,} |")
print(f"\nratio {report['ratio']} (goal >= 0.8); whole script {script_s} s; written to {out}/archiver.json")
if messages != report["produced"] or a["rows"] != p["rows"]:
    sys.exit(f"mismatch: archived {messages} of {report['produced']} messages, {a['rows']} rows vs {p['rows']}")
EOF
