#!/usr/bin/env bash
# `make bench`, part (g): one learner for three replicas. Writes its files under target/bench
# (scripts/bench_report.py folds them into report.json); alone, `scripts/bench_shared.sh`
# prints its own table. Needs the release build and the stack (scripts/bench.sh does both).
#   - the cluster's own limit: Kafka's ProducerPerformance, acks=all, a state-sized record
#     (600 B), halved since a step is two messages;
#   - steps per second with 256 concurrent episodes and three replicas (random: the
#     transport's share; DQN on one learner), with linger.ms 0 (the default, lowest latency)
#     and 10 (batching under load);
#   - weight staleness and policy lag, as the live learner measured them on the action topic;
#   - the learner's updates per second reading what that run logged from Kafka, against the
#     same learner fed from memory (`--preload`), every update done (`--dqn-backpressure`).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
out=target/bench
mkdir -p "$out"
BENCH_EPISODES=${BENCH_EPISODES:-2000}
bin=${CARGO_TARGET_DIR:-target}/release
JAVA=${JAVA17:-$(ls -d /usr/lib/jvm/java-17-openjdk-*/bin/java | head -n 1)}
source scripts/bench_lib.sh

pp_topic="bench_pp_$(date +%s%N)"
topic "$pp_topic" 6
"$JAVA" -Xmx512m -Dlog4j.configuration="file:$PWD/deploy/local/kafka/tools-log4j.properties" -cp "$CACHE/kafka-libs/*" \
  org.apache.kafka.tools.ProducerPerformance --topic "$pp_topic" --num-records "${PP_RECORDS:-200000}" \
  --record-size 600 --throughput -1 --producer-props bootstrap.servers=127.0.0.1:9092 acks=all \
  > "$out/producer-perf.txt" 2>&1
tail -n 1 "$out/producer-perf.txt"

for linger in 0 10; do
  export KAFKA_LINGER_MS=$linger
  REPLICAS=3 kafka_run "random3-linger$linger" "$out/throughput-kafka-3-linger$linger.json" \
    --episodes "$BENCH_EPISODES" --concurrency 256
done

weights="bench_weights_$(date +%s%N)"
JAVA17=$JAVA STREAMREC_CACHE=$CACHE deploy/local/bin/kafka-topics --bootstrap-server 127.0.0.1:9092 \
  --create --topic "$weights" --partitions 1 --replication-factor 3 --config min.insync.replicas=2 \
  --config cleanup.policy=compact > /dev/null
export AGENT_WEIGHTS_TOPIC=$weights DQN_PRESET=fashion KAFKA_LINGER_MS=10
POLICY=dqn REPLICAS=3 LEARNING=shared LEARNER_JSON="$out/learner-live.json" \
  kafka_run shared "$out/throughput-kafka-shared.json" --episodes "$BENCH_EPISODES" --concurrency 256
for mode in kafka memory; do
  rm -rf "$out/ckpt-offline-$mode"
  "$bin/agent-svc" learn "${last_flags[@]}" --until-caught-up --dqn-backpressure $([[ $mode == memory ]] && echo --preload) \
    --learner-group-id "bench_learner_${mode}_$(date +%s%N)" --learner-offset-reset earliest \
    --checkpoint-dir "$out/ckpt-offline-$mode" --summary-json "$out/learner-$mode.json" > "$out/learner-$mode.log" 2>&1 \
    || { echo "bench: the offline learner ($mode) failed, see $out/learner-$mode.log" >&2; exit 1; }
done
unset AGENT_WEIGHTS_TOPIC DQN_PRESET KAFKA_LINGER_MS
rm -rf "$out"/ckpt-*
[[ ${BENCH_SHARED_REPORT:-1} == 0 ]] || python3 scripts/bench_report.py "$out" --only shared
