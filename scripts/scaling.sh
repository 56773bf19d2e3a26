#!/usr/bin/env bash
# `make scaling`: sample efficiency of one learner for many replicas, through the real stack.
# Three set-ups train on the same TRAIN_EPISODES episodes of the train users (make eval's
# dataset, CONCURRENCY episodes at a time), then each is evaluated frozen on the
# held-out test users (every test user once, greedy, learning nothing: `--learning frozen`):
#   shared-1  one replica acting on one learner's weights (`agent-svc learn`)
#   shared-3  three replicas acting on one learner's weights
#   local-3   three replicas each learning alone (`--learning local`, the first stage's design);
#             in evaluation each serves its own network to the users of its partitions
# Writes target/scaling/report.json and prints the table. The DQN runs `--dqn-preset fashion`
# (DQN_PRESET overrides), every process on the same two cores.
#   TRAIN_EPISODES=3000 CONCURRENCY=64 SETUPS="shared-1 shared-3 local-3" SCALING_OUT=target/scaling
#   LEARNER_FLAGS="--dqn-backpressure" (extra flags of the learner: here, every update done, the
#   learner reading only as fast as it trains)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
out=${SCALING_OUT:-target/scaling}
read -r -a learner_flags <<< "${LEARNER_FLAGS:-}"
TRAIN_EPISODES=${TRAIN_EPISODES:-3000}
CONCURRENCY=${CONCURRENCY:-64}
SETUPS=${SETUPS:-shared-1 shared-3 local-3}
export DQN_PRESET=${DQN_PRESET:-fashion}

scripts/libtorch.sh
cargo build --release --locked -p env-svc -p agent-svc
bin=${CARGO_TARGET_DIR:-target}/release
deploy/local/stack.sh up
source scripts/bench_lib.sh
DATASET=$(scripts/eval_dataset.sh "$bin/env-svc")
export DATASET
rm -rf "$out"
mkdir -p "$out"
# Every test user once: the test split's size, as env-svc counts it.
"$bin/env-svc" inspect --dataset "$DATASET" --json "$out/dataset.json" > /dev/null 2>&1
test_users=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stats"]["test_users"])' "$out/dataset.json")

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
}
trap cleanup EXIT

# Stops the processes in `pids`, last started first; fails naming the log of one that failed.
stop_all() { # logs...
  local logs=("$@") i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}"
    wait "${pids[$i]}" || { echo "scaling: a process failed, see ${logs[$i]}" >&2; exit 1; }
  done
  pids=()
}

fresh_topics() { # base -> sets flags
  topic "${1}_state" 6; topic "${1}_action" 6; topic "${1}_dlq" 1
  flags=(--state-topic "${1}_state" --action-topic "${1}_action" --dead-letter-topic "${1}_dlq")
}

for setup in $SETUPS; do
  learning=${setup%-*} replicas=${setup#*-}
  dir=$out/$setup
  mkdir -p "$dir"
  base="scaling_${setup/-/_}_$(date +%s%N)"
  echo "==> $setup: training on $TRAIN_EPISODES episodes of the train users"
  fresh_topics "${base}_train"
  logs=()
  if [[ $learning == shared ]]; then
    weights="${base}_weights"
    JAVA17=${JAVA17:-$(ls -d /usr/lib/jvm/java-17-openjdk-*/bin/java | head -n 1)} STREAMREC_CACHE=$CACHE \
      deploy/local/bin/kafka-topics --bootstrap-server 127.0.0.1:9092 --create --topic "$weights" --partitions 1 \
      --replication-factor 3 --config min.insync.replicas=2 --config cleanup.policy=compact > /dev/null
    "$bin/agent-svc" learn "${flags[@]}" --weights-topic "$weights" --learner-group-id "${base}_learner" \
      --learner-offset-reset earliest --checkpoint-dir "$dir/learner" --summary-json "$dir/learner.json" \
      "${learner_flags[@]}" > "$dir/learner.log" 2>&1 &
    pids+=($!)
    logs+=("$dir/learner.log")
  fi
  for i in $(seq 1 "$replicas"); do
    extra=()
    [[ $learning == shared ]] && extra=(--weights-topic "$weights")
    "$bin/agent-svc" run --policy dqn --learning "$learning" "${flags[@]}" "${extra[@]}" --group-id "${base}_agents" \
      --offset-reset earliest --replica-id "replica-$i" --checkpoint-dir "$dir/replica-$i" \
      --summary-json "$dir/replica-$i-train.json" > "$dir/replica-$i-train.log" 2>&1 &
    pids+=($!)
    logs+=("$dir/replica-$i-train.log")
  done
  "$bin/env-svc" run --quiet "${flags[@]}" --split train --episodes "$TRAIN_EPISODES" --concurrency "$CONCURRENCY" \
    --summary-json "$dir/train.json" > "$dir/env-train.log" 2>&1
  stop_all "${logs[@]}"
  if [[ $learning == shared ]]; then
    # A learner behind the stream (LEARNER_FLAGS=--dqn-backpressure) resumes from its checkpoint
    # and committed offsets and learns the rest: every set-up learns from the same episodes.
    "$bin/agent-svc" learn "${flags[@]}" --weights-topic "$weights" --learner-group-id "${base}_learner" \
      --until-caught-up --checkpoint-dir "$dir/learner" --summary-json "$dir/learner-rest.json" \
      "${learner_flags[@]}" > "$dir/learner-rest.log" 2>&1 ||
      { echo "scaling: the learner's catch-up failed, see $dir/learner-rest.log" >&2; exit 1; }
  fi

  echo "==> $setup: evaluating frozen on the $test_users test users"
  fresh_topics "${base}_test"
  logs=()
  for i in $(seq 1 "$replicas"); do
    ckpt=$dir/replica-$i
    [[ $learning == shared ]] && ckpt=$dir/learner
    "$bin/agent-svc" run --policy dqn --learning frozen "${flags[@]}" --group-id "${base}_eval" --offset-reset earliest \
      --replica-id "eval-$i" --checkpoint-dir "$ckpt" --summary-json "$dir/replica-$i-test.json" \
      > "$dir/replica-$i-test.log" 2>&1 &
    pids+=($!)
    logs+=("$dir/replica-$i-test.log")
  done
  "$bin/env-svc" run --quiet "${flags[@]}" --split test --episodes "$test_users" --concurrency "$CONCURRENCY" \
    --summary-json "$dir/test.json" > "$dir/env-test.log" 2>&1
  stop_all "${logs[@]}"
done
trap - EXIT

python3 - "$out" "$TRAIN_EPISODES" "$CONCURRENCY" "$DQN_PRESET" "${LEARNER_FLAGS:-}" $SETUPS << 'EOF'
import json, math, sys
from pathlib import Path

out, train_episodes, concurrency, preset, lflags = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
setups = sys.argv[6:]


report = {
    "command": f"make scaling TRAIN_EPISODES={train_episodes} CONCURRENCY={concurrency} DQN_PRESET={preset} LEARNER_FLAGS='{lflags}'",
    "setups": {},
}
print(f"\nsetup      train steps  learner updates (skipped)  test reward rate [95% interval]   test episodes")
for setup in setups:
    d = out / setup
    train, test = json.loads((d / "train.json").read_text()), json.loads((d / "test.json").read_text())
    rets = test["returns"]
    n, rate = len(rets), test["reward_rate"]
    # Per-episode returns, normal interval on the mean return, scaled to a rate per step.
    mean = sum(rets) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in rets) / max(n - 1, 1))
    half = 1.96 * sd / math.sqrt(n) * (rate / mean if mean else 0.0)
    learners = []
    for name in ("learner.json", "learner-rest.json"):
        if (d / name).exists():
            learners.append(json.loads((d / name).read_text()))
    row = {
        "train_steps": train["steps"],
        "train_reward_rate": train["reward_rate"],
        "test_episodes": n,
        "test_steps": test["steps"],
        "test_reward_rate": rate,
        "test_reward_rate_95": [rate - half, rate + half],
        "test_mean_return": mean,
        "random_reward_rate": test["random_reward_rate"],
        # The live learner, and its catch-up pass after the run (updates: the total reached).
        "learner": {
            "transitions": sum(l["transitions"] for l in learners),
            "updates": max(l["updates"] for l in learners),
            "skipped_updates": sum(l["skipped_updates"] for l in learners),
            "versions": sum(l["versions"] for l in learners),
            "transitions_after_the_run": learners[-1]["transitions"],
        } if learners else None,
    }
    report["setups"][setup] = row
    upd = f"{row['learner']['updates']} ({row['learner']['skipped_updates']})" if learners else "each replica its own"
    print(f"{setup:10} {train['steps']:11}  {upd:>25}  {rate:.4f} [{rate - half:.4f}, {rate + half:.4f}]   {n}")
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"\nreport: {out / 'report.json'}")
EOF
