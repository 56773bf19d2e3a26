# Helpers of the benchmark scripts (sourced): fresh topics and one env run through Kafka.
# Needs CACHE, out and bin set, and the stack up.

# Creates a topic (RF 3, min ISR 2) through the stack's kafka-topics wrapper.
topic() { # name partitions
  JAVA17=${JAVA17:-$(ls -d /usr/lib/jvm/java-17-openjdk-*/bin/java | head -n 1)} STREAMREC_CACHE=$CACHE \
    deploy/local/bin/kafka-topics --bootstrap-server 127.0.0.1:9092 --create --if-not-exists --topic "$1" \
    --partitions "$2" --replication-factor 3 --config min.insync.replicas=2 > /dev/null
}

# One env run through Kafka against agent-svc (policy $POLICY, default random; REPLICAS
# processes, default 1; with LEARNING=shared, one `agent-svc learn` too, whose summary goes to
# $LEARNER_JSON), on fresh topics. Leaves the topic flags in `last_flags`.
kafka_run() { # name summary-json env-flags...
  local name=$1 summary=$2; shift 2
  local base="bench_${name}_$(date +%s%N)" pids=() i
  topic "${base}_state" 6; topic "${base}_action" 6; topic "${base}_dlq" 1
  last_flags=(--state-topic "${base}_state" --action-topic "${base}_action" --dead-letter-topic "${base}_dlq")
  if [[ ${LEARNING:-local} == shared ]]; then
    rm -rf "$out/ckpt-$name"
    "$bin/agent-svc" learn "${last_flags[@]}" --learner-group-id "${base}_learner" --learner-offset-reset earliest \
      --checkpoint-dir "$out/ckpt-$name" --summary-json "$LEARNER_JSON" > "$out/learner-$name.log" 2>&1 &
    pids+=($!)
  fi
  # METRICS_PORT set: each process serves /metrics from that port up, listed for the stack's
  # Prometheus (which scrapes them as it would any run) until the run ends.
  local metrics=() targets=() targets_file=""
  metrics_flag() { # process name -> sets `metrics` to its flags
    metrics=()
    [[ -n ${METRICS_PORT:-} ]] || return 0
    local addr="127.0.0.1:$((METRICS_PORT + ${#targets[@]}))"
    metrics=(--metrics-addr "$addr")
    targets+=("{\"targets\": [\"$addr\"], \"labels\": {\"process\": \"$1\", \"run\": \"$base\"}}")
  }
  for i in $(seq 1 "${REPLICAS:-1}"); do
    metrics_flag "$name-$i"
    "$bin/agent-svc" run --policy "${POLICY:-random}" --learning "${LEARNING:-local}" --group-id "$base" \
      --offset-reset earliest --replica-id "$name-$i" "${last_flags[@]}" "${metrics[@]}" > "$out/agent-$name-$i.log" 2>&1 &
    pids+=($!)
  done
  metrics_flag "env-$name"
  if ((${#targets[@]})); then
    targets_file=${STREAMREC_RUN:-$CACHE/run}/prometheus/targets/$base.json
    mkdir -p "$(dirname "$targets_file")"
    (IFS=,; echo "[${targets[*]}]") > "$targets_file"
  fi
  "$bin/env-svc" run --quiet "${last_flags[@]}" --summary-json "$summary" "${metrics[@]}" "$@" > "$out/env-$name.log" 2>&1
  [[ -z $targets_file ]] || rm -f "$targets_file"
  # Replicas first, then the learner (it reads their last actions, then publishes and commits).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}"
    wait "${pids[$i]}" || { echo "bench: an agent-svc process of run $name failed; logs: $out/*-$name*.log" >&2; exit 1; }
  done
}
