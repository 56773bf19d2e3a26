#!/usr/bin/env bash
# `make sim`: a full simulation. env-svc plays EPISODES episodes of the Amazon Fashion
# environment against agent-svc, the two talking only through TRANSPORT (kafka: two processes
# and the local stack; memory: one process, bounded channels). Prints the env's summary and
# writes it to target/sim/summary.json.
#   DATASET=data/sample EPISODES=200 POLICY=dqn TRANSPORT=kafka
# The DQN runs with the settings `make eval` measured (`--dqn-preset fashion`: the MLP network with
# the wide table, gamma 0, full-feedback hindsight); any DQN_* variable overrides one of them,
# DQN_PRESET=paper runs the paper's network. It learns while it serves
# and checkpoints into target/sim/checkpoints/<hash of the DQN_* settings and the dataset>, so
# each `make sim` with the same settings and data goes on from where the last one stopped, and
# other settings or data start from scratch. (agent-svc itself refuses a checkpoint of another
# network, action space or catalogue, so a clash is an error, never a silent mix.)
# Either service failing fails the run: an agent that stops stops the env at once.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATASET=${DATASET:-data/sample} EPISODES=${EPISODES:-200} POLICY=${POLICY:-dqn}
export DQN_PRESET=${DQN_PRESET:-fashion}
TRANSPORT=${TRANSPORT:-kafka}
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
    echo "==> agent-svc run --policy $POLICY (log: $out/agent.log)"
    # The dataset's identity: its resolved path and each file's name, size and time.
    data_id=$(cd "$DATASET" && pwd -P && find . -maxdepth 1 -type f -printf '%f %s %T@\n' | sort)
    ckpt=$out/checkpoints/$({ env | grep '^DQN_' | sort; echo "$data_id"; } | sha1sum | cut -c1-12)
    echo "    checkpoints: $ckpt"
    "$bin/agent-svc" run --policy "$POLICY" --checkpoint-dir "$ckpt" > "$out/agent.log" 2>&1 &
    agent=$!
    env_pid=""
    cleanup() {
      [[ -n $env_pid ]] && kill -TERM "$env_pid" 2> /dev/null
      kill -TERM "$agent" 2> /dev/null || true
      wait 2> /dev/null || true
    }
    trap cleanup EXIT
    echo "==> env-svc run: $EPISODES episodes on $DATASET through Kafka"
    "$bin/env-svc" run --summary-json "$out/summary.json" &
    env_pid=$!
    # Whichever ends first: the env (normally), or the agent (a failure: stop the env too).
    set +e
    wait -n "$env_pid" "$agent"
    first=$?
    set -e
    if ! kill -0 "$agent" 2> /dev/null; then
      agent_rc=0
      wait "$agent" || agent_rc=$?
      echo "sim: agent-svc stopped (exit $agent_rc) before the env finished:" >&2
      agent_error "$out/agent.log" >&2
      exit 1
    fi
    env_pid=""
    if ((first != 0)); then
      echo "sim: env-svc failed (exit $first); agent log: $out/agent.log" >&2
      exit "$first"
    fi
    kill -TERM "$agent"
    wait "$agent" || { echo "sim: agent-svc failed, see $out/agent.log:" >&2; agent_error "$out/agent.log" >&2; exit 1; }
    trap - EXIT
    echo "agent-svc: $(tail -n 1 "$out/agent.log")"
    echo
    echo "==> archiving the run into Cassandra"
    scripts/archive_demo.sh
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
