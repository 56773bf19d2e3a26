#!/usr/bin/env bash
# `make bench`: benchmarks that print numbers and a ratio against a baseline run in the same
# script; writes target/bench/report.json. Nothing here asserts a threshold.
#   (a) load + preprocess a full-size synthetic 2018 file (883,636 reviews): seconds, peak RSS
#   (b) step round trip with one episode in flight vs Kafka's own EndToEndLatency tool
#   (c) steps per second with 256 concurrent episodes, through Kafka vs in memory; and with the
#       DQN agent answering (learning as it goes) instead of random, through Kafka
#   (d) DQN learner and inference, Rust vs PyTorch, with the paper's network and with the tower
#       head at 186,637 items; (e) archiver; (f) RecoGym port vs Python
#   (g) one learner for three replicas: steps per second with 256 concurrent episodes against
#       the cluster's own limit (Kafka's ProducerPerformance, acks=all, a state-sized record,
#       halved: a step is two messages), weight staleness, and the learner's updates per
#       second reading from Kafka against the same learner fed from memory
#   (h) what the Prometheus metrics cost: steps per second with metrics off and on, alternated
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
out=target/bench
mkdir -p "$out"
BENCH_EPISODES=${BENCH_EPISODES:-2000}
RTT_EPISODES=${RTT_EPISODES:-100}
E2E_MESSAGES=${E2E_MESSAGES:-3000}

scripts/libtorch.sh
cargo build --release --locked -p env-svc -p agent-svc -p sim
bin=${CARGO_TARGET_DIR:-target}/release
deploy/local/stack.sh up

echo "==> (a) load and preprocess a full-size synthetic dataset"
full=$(scripts/fullsize.sh "$bin/env-svc")
"$bin/env-svc" inspect --dataset "$full" --json "$out/load.json" 2> /dev/null | tail -n 3

source scripts/bench_lib.sh

echo "==> (b) step round trip, one episode in flight, vs EndToEndLatency"
kafka_run rtt "$out/rtt.json" --episodes "$RTT_EPISODES" --concurrency 1
e2e_topic="bench_e2e_$(date +%s%N)"
topic "$e2e_topic" 1
JAVA=${JAVA17:-$(ls -d /usr/lib/jvm/java-17-openjdk-*/bin/java | head -n 1)}
# Same cluster, acks=all, a message the size of a state (about 600 bytes).
"$JAVA" -Xmx512m -Dlog4j.configuration="file:$PWD/deploy/local/kafka/tools-log4j.properties" -cp "$CACHE/kafka-libs/*" \
  org.apache.kafka.tools.EndToEndLatency 127.0.0.1:9092 "$e2e_topic" "$E2E_MESSAGES" all 600 > "$out/e2e.txt" 2>&1

echo "==> (c) steps per second with 256 concurrent episodes: Kafka vs memory"
kafka_run throughput "$out/throughput-kafka.json" --episodes "$BENCH_EPISODES" --concurrency 256
"$bin/streamrec-sim" memory --quiet --policy random --episodes "$BENCH_EPISODES" --concurrency 256 \
  --summary-json "$out/throughput-memory.json" > "$out/memory.log" 2>&1

# The same load answered by the DQN (the paper's LSTM network, learning on its own thread).
POLICY=dqn kafka_run throughput-dqn "$out/throughput-kafka-dqn.json" --episodes "$BENCH_EPISODES" --concurrency 256

BENCH_SHARED_REPORT=0 scripts/bench_shared.sh

bin=$bin scripts/bench_metrics.sh

python3 scripts/bench_report.py "$out"

echo "==> DQN learner and inference, Rust (tch) vs PyTorch"
scripts/bench_dqn.sh

echo "==> the DQN at the full catalogue's size (186,637 items), Rust (tch) vs PyTorch"
scripts/bench_tower.sh

echo "==> archiver vs a plain loop of prepared inserts"
scripts/bench_archiver.sh

echo "==> RecoGym: the Rust port vs the Python simulator (bandit steps per second)"
scripts/bench_recogym.sh
