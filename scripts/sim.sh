#!/usr/bin/env bash
# `make sim`: a full simulation. env-svc plays EPISODES episodes of the Amazon Fashion
# environment against agent-svc, the two talking only through TRANSPORT (kafka: two processes
# and the local stack; memory: one process, bounded channels). Prints the env's summary and
# writes it to target/sim/summary.json.
#   DATASET=data/sample EPISODES=200 POLICY=dqn TRANSPORT=kafka
# The DQN runs with the settings `make eval` measured (the MLP network with the wide table,
# gamma 0, full-feedback hindsight); any DQN_* variable overrides them. It learns while it serves and checkpoints into
# target/sim/checkpoints/<hash of the DQN_* settings>, so each `make sim` with the same settings
# goes on from where the last one stopped (and other settings start from scratch instead of
# being refused a checkpoint of another network shape).
set -euo pipefail
cd "$(dirname "$0")/.."

export DATASET=${DATASET:-data/sample} EPISODES=${EPISODES:-200} POLICY=${POLICY:-dqn}
export DQN_NET=${DQN_NET:-mlp} DQN_GAMMA=${DQN_GAMMA:-0} DQN_LR=${DQN_LR:-0.003} DQN_HIDDEN=${DQN_HIDDEN:-64}
export DQN_EPS_DECAY_STEPS=${DQN_EPS_DECAY_STEPS:-3000} DQN_WIDE=${DQN_WIDE:-true}
TRANSPORT=${TRANSPORT:-kafka}
out=target/sim
mkdir -p "$out"
rm -f "$out/summary.json"

scripts/libtorch.sh
echo "==> building (release)"
cargo build --release --locked -p env-svc -p agent-svc -p sim
bin=${CARGO_TARGET_DIR:-target}/release

case $TRANSPORT in
  kafka)
    echo "==> stack"
    deploy/local/stack.sh up
    echo "==> agent-svc run --policy $POLICY (log: $out/agent.log)"
    ckpt=$out/checkpoints/$(env | grep '^DQN_' | sort | sha1sum | cut -c1-12)
    echo "    checkpoints: $ckpt"
    "$bin/agent-svc" run --policy "$POLICY" --checkpoint-dir "$ckpt" > "$out/agent.log" 2>&1 &
    agent=$!
    trap 'kill -TERM "$agent" 2> /dev/null || true; wait "$agent" 2> /dev/null || true' EXIT
    echo "==> env-svc run: $EPISODES episodes on $DATASET through Kafka"
    "$bin/env-svc" run --summary-json "$out/summary.json"
    kill -TERM "$agent"
    wait "$agent" || { echo "agent-svc failed, see $out/agent.log" >&2; exit 1; }
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
