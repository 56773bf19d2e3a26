#!/usr/bin/env bash
# `make sim`: a full simulation. env-svc plays EPISODES episodes of the Amazon Fashion
# environment against agent-svc, the two talking only through TRANSPORT (kafka: two processes
# and the local stack; memory: one process, bounded channels). Prints the env's summary and
# writes it to target/sim/summary.json.
#   DATASET=data/sample EPISODES=200 POLICY=dqn TRANSPORT=kafka REPLICAS=1 LEARNING=shared
# The DQN runs with the settings `make eval` measured (`--dqn-preset fashion`: the MLP network with
# the wide table, gamma 0, full-feedback hindsight); any DQN_* variable overrides one of them,
# DQN_PRESET=paper runs the paper's network. It learns while it serves
# and checkpoints into target/sim/checkpoints/<hash of the DQN_* settings and the dataset>, so
# each `make sim` with the same settings and data goes on from where the last one stopped, and
# other settings or data start from scratch (CHECKPOINTS=<dir> names the folder instead).
# (agent-svc itself refuses a checkpoint of another network, action space or catalogue, so a
# clash is an error, never a silent mix.)
# Either service failing fails the run: an agent that stops stops the env at once.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATASET=${DATASET:-data/sample} EPISODES=${EPISODES:-200} POLICY=${POLICY:-dqn}
export DQN_PRESET=${DQN_PRESET:-fashion}
TRANSPORT=${TRANSPORT:-kafka}
# REPLICAS agent-svc replicas answer; with the DQN they only act, on the weights one learner
# (`agent-svc learn`) publishes on the weights topic (LEARNING=shared), or each learns alone
# (LEARNING=local, the way before the shared learner), or serve the checkpoint as it is
# (LEARNING=frozen: greedy, or exploring at AGENT_FROZEN_EPSILON).
REPLICAS=${REPLICAS:-1}
LEARNING=${LEARNING:-$([[ $POLICY == dqn ]] && echo shared || echo local)}
if [[ $LEARNING == shared && $POLICY != dqn ]]; then
  echo "sim: LEARNING=shared needs POLICY=dqn (the learner trains a DQN), not '$POLICY'" >&2
  exit 2
fi
[[ $REPLICAS =~ ^[1-9][0-9]*$ ]] || { echo "sim: REPLICAS must be a positive number, not '$REPLICAS'" >&2; exit 2; }
out=target/sim
mkdir -p "$out"
rm -f "$out/summary.json"

scripts/libtorch.sh
echo "==> building (release)"
cargo build --release --locked -p env-svc -p agent-svc -p sim -p archiver
bin=${CARGO_TARGET_DIR:-target}/release

# The error a service ended with (its `Error:` block, without the backtrace), else its last lines.
agent_error() {
  if grep -q '^Error:' "$1"; then
    sed -n '/^Error:/,/^Stack backtrace/p' "$1" | grep -v '^Stack backtrace'
  else
    tail -n 5 "$1"
  fi
}

case $TRANSPORT in
  kafka)
    echo "==> stack"
    deploy/local/stack.sh up
    # The dataset's identity: its resolved path and each file's name, size and time.
    data_id=$(cd "$DATASET" && pwd -P && find . -maxdepth 1 -type f -printf '%f %s %T@\n' | sort)
    ckpt=$out/checkpoints/$({ env | grep '^DQN_' | sort; echo "$data_id"; echo "$LEARNING"; } | sha1sum | cut -c1-12)
    # CHECKPOINTS=<dir> puts them there instead (`make ope-fashion LOGGING=dqn` starts a logging
    # DQN from a copy of a checkpoint that way).
    ckpt=${CHECKPOINTS:-$ckpt}
    echo "    checkpoints: $ckpt"
    # The weights topic is shared by every run: the learner and its replicas of these settings
    # and data publish and read under a model name of their own (a replica that took another
    # dataset's version would stop: one agent group serves one catalogue). The name is the
    # checkpoint's, kept beside it: a learner starting without a checkpoint (the first run, or
    # after the folder was deleted to start over) takes a new one, or its replicas would first
    # serve the newest version an earlier learner of the same settings left on the topic.
    if [[ $LEARNING == shared ]]; then
      if [[ ! -f $ckpt/learner/dqn.ckpt || ! -f $ckpt/weights-model ]]; then
        mkdir -p "$ckpt"
        echo "dqn-$(basename "$ckpt")-$(date +%s)" > "$ckpt/weights-model"
      fi
      AGENT_WEIGHTS_MODEL=$(cat "$ckpt/weights-model")
      export AGENT_WEIGHTS_MODEL
    fi
    # The learner's consumer group is this run's own, and starts at the end of the step topics
    # (AGENT_LEARNER_OFFSET_RESET latest): the learner learns from this run's steps, on top of
    # its checkpoint. A group kept from run to run would first read every step published since
    # its last commit: other runs of other datasets (a state of another catalogue stops the
    # learner) and `make ope-fashion`'s logging runs.
    export AGENT_LEARNER_GROUP_ID="agent-learner-$(basename "$ckpt")-$(date +%s%N | cut -c1-13)"
    export AGENT_LEARNER_OFFSET_RESET=latest
    pids=()
    env_pid=""
    # Every process serves /metrics on a port of its own (SIM_METRICS_PORT and up), listed for
    # the stack's Prometheus in its targets folder while the run lasts.
    port=${SIM_METRICS_PORT:-9410}
    targets_dir=${STREAMREC_RUN:-${STREAMREC_CACHE:-$HOME/.cache/streamrec}/run}/prometheus/targets
    targets=()
    metrics_addr() { # process name: sets $addr, its --metrics-addr, and records it as a target
      addr="127.0.0.1:$((port + ${#targets[@]}))"
      targets+=("{\"targets\": [\"$addr\"], \"labels\": {\"process\": \"$1\", \"run\": \"make-sim\"}}")
    }
    cleanup() {
      [[ -n $env_pid ]] && kill -TERM "$env_pid" 2> /dev/null
      for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null || true; done
      wait 2> /dev/null || true
      rm -f "$targets_dir/make-sim.json"
    }
    trap cleanup EXIT
    logs=()
    if [[ $LEARNING == shared ]]; then
      echo "==> agent-svc learn: one learner for $REPLICAS replica(s) (log: $out/learner.log)"
      metrics_addr learner
      "$bin/agent-svc" learn --checkpoint-dir "$ckpt/learner" --summary-json "$out/learner.json" \
        --metrics-addr "$addr" > "$out/learner.log" 2>&1 &
      pids+=($!)
      logs+=("$out/learner.log")
      # States published before the learner holds its partitions would never be learned from.
      for _ in $(seq 1 600); do
        grep -q 'learner partitions assigned' "$out/learner.log" && break
        kill -0 "${pids[0]}" 2> /dev/null || break
        sleep 0.1
      done
      grep -q 'learner partitions assigned' "$out/learner.log" || {
        echo "sim: the learner holds no partition after 60 s:" >&2
        agent_error "$out/learner.log" >&2
        exit 1
      }
    fi
    for i in $(seq 1 "$REPLICAS"); do
      log=$out/agent.log
      ((REPLICAS > 1)) && log=$out/agent-$i.log
      echo "==> agent-svc run --policy $POLICY --learning $LEARNING, replica $i (log: $log)"
      metrics_addr "replica-$i"
      REPLICA_ID=replica-$i "$bin/agent-svc" run --policy "$POLICY" --learning "$LEARNING" \
        --checkpoint-dir "$ckpt/replica-$i" --summary-json "$out/agent-$i.json" \
        --metrics-addr "$addr" > "$log" 2>&1 &
      pids+=($!)
      logs+=("$log")
    done
    echo "==> env-svc run: $EPISODES episodes on $DATASET through Kafka"
    started_at=$(($(date +%s) - 2))
    metrics_addr env-svc
    "$bin/env-svc" run --summary-json "$out/summary.json" --metrics-addr "$addr" &
    env_pid=$!
    mkdir -p "$targets_dir"
    (IFS=,; echo "[${targets[*]}]") > "$targets_dir/make-sim.json"
    # Whichever ends first: the env (normally), or an agent process (a failure: stop the env too).
    set +e
    wait -n "$env_pid" "${pids[@]}"
    first=$?
    set -e
    for i in "${!pids[@]}"; do
      if ! kill -0 "${pids[$i]}" 2> /dev/null; then
        rc=0
        wait "${pids[$i]}" || rc=$?
        echo "sim: $(basename "${logs[$i]}" .log) stopped (exit $rc) before the env finished:" >&2
        agent_error "${logs[$i]}" >&2
        exit 1
      fi
    done
    env_pid=""
    if ((first != 0)); then
      echo "sim: env-svc failed (exit $first); agent logs: ${logs[*]}" >&2
      exit "$first"
    fi
    # Replicas first (their last actions reach the learner), then the learner (it publishes,
    # checkpoints and commits on SIGTERM).
    for i in $(seq $((${#pids[@]} - 1)) -1 0); do
      kill -TERM "${pids[$i]}"
      wait "${pids[$i]}" || { echo "sim: ${logs[$i]} shows a failure:" >&2; agent_error "${logs[$i]}" >&2; exit 1; }
    done
    trap - EXIT
    rm -f "$targets_dir/make-sim.json"
    for log in "${logs[@]}"; do echo "$(basename "$log" .log): $(tail -n 1 "$log")"; done
    echo
    prometheus=http://127.0.0.1:${STACK_PROMETHEUS_PORT:-9090}
    echo "==> the run in Prometheus: $prometheus/graph (every series starts with streamrec_), for example"
    echo "    sum(rate(streamrec_env_steps_total[1m]))                      steps per second"
    echo "    histogram_quantile(0.99, sum by (le) (rate(streamrec_env_step_round_trip_seconds_bucket[1m])))"
    echo "                                                                  step round trip p99"
    "$bin/streamrec-sim" prom-report --prometheus-url "$prometheus" --start "$started_at" --out "$out/prometheus.png"
    echo
    echo "==> archiving the run into Cassandra"
    SIM_STARTED_AT=$started_at scripts/archive_demo.sh
    ;;
  memory)
    echo "==> streamrec-sim memory: $EPISODES episodes on $DATASET, policy $POLICY, bounded channels"
    "$bin/streamrec-sim" memory --policy "$POLICY" --summary-json "$out/summary.json"
    ;;
  *)
    echo "sim: TRANSPORT must be kafka or memory, not '$TRANSPORT'" >&2
    exit 2
    ;;
esac
echo
echo "summary written to $out/summary.json"
