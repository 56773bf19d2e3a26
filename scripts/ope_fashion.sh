#!/usr/bin/env bash
# `make ope-fashion`: off-policy evaluation on the archive, checked against the exact truth on
# the Amazon Fashion replay environment. A logging policy serves EPISODES episodes through Kafka
# (`make sim` with POLICY=$LOGGING, AGENT_EPSILON=$LOGGING_EPSILON, LEARNING=local; LOGGING=dqn
# below), the run is archived in Cassandra (`archiver run-once`), then `agent-svc ope --env
# fashion --truth` estimates each target's value from the archive (IPS, SNIPS, DM, DR, 95%
# bootstrap intervals over episodes) and computes its true value on the same states from the
# dataset: under the replay user model a recommendation pays 1 exactly when the user reviews the
# product later, so any policy's value on the logged states is known.
#
# Targets: random (uniform), popularity and cooccurrence (epsilon TARGET_EPSILON, trained on the
# archive's fold 0 and evaluated on fold 1), and with DQN_CHECKPOINT=<dir> a DQN checkpoint
# (greedy; the DQN_* settings of the run that wrote it: DQN_PRESET defaults to `fashion`, as in
# `make sim`).
#
# LOGGING=dqn logs with the DQN checkpoint LOGGING_CHECKPOINT (default: DQN_CHECKPOINT) frozen
# at epsilon LOGGING_EPSILON (`--learning frozen --frozen-epsilon`): the serving checkpoint's
# traffic, on which DQN_CHECKPOINT (another checkpoint, or the same one served greedily) is
# evaluated.
#
# Writes target/ope-fashion/ope-fashion.json (every estimate, its error and interval width
# against the truth), one <target>.json and <target>.png per target, and prints the table.
#
#   make ope-fashion                                                # data/sample, 2000 episodes
#   SIZE=full EPISODES=5000 make ope-fashion                        # the full-size generated set
#   LOGGING=popularity LOGGING_EPSILON=0.5 TARGETS=random,popularity make ope-fashion
#   SIZE=full EPISODES=5000 LOGGING=dqn LOGGING_EPSILON=0.5 TARGETS=random,popularity DQN_CHECKPOINT=<dir> make ope-fashion
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

export EPISODES=${EPISODES:-2000}
# The network the checkpoint was written with: `make sim`'s default (scripts/sim.sh).
export DQN_PRESET=${DQN_PRESET:-fashion}
scripts/libtorch.sh
cargo build --release --locked -p env-svc -p agent-svc -p sim -p archiver
bin=${CARGO_TARGET_DIR:-target}/release
if [[ ${SIZE:-sample} == full ]]; then
  DATASET=$(scripts/fullsize.sh "$bin/env-svc")
fi
export DATASET=${DATASET:-data/sample}
LOGGING=${LOGGING:-popularity} LOGGING_EPSILON=${LOGGING_EPSILON:-0.5}
TARGETS=${TARGETS:-random,popularity,cooccurrence} TARGET_EPSILON=${TARGET_EPSILON:-0.1}
out=target/ope-fashion
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.png

logger=(LEARNING=local)
if [[ $LOGGING == dqn ]]; then
  logging_ckpt=${LOGGING_CHECKPOINT:-${DQN_CHECKPOINT:-}}
  [[ -f $logging_ckpt/dqn.ckpt ]] || {
    echo "ope-fashion: LOGGING=dqn serves LOGGING_CHECKPOINT (or DQN_CHECKPOINT), and '$logging_ckpt' holds no dqn.ckpt" >&2
    exit 2
  }
  # make sim's replica reads <CHECKPOINTS>/replica-1; a frozen DQN writes nothing there.
  rm -rf "$out/logger"
  mkdir -p "$out/logger"
  ln -s "$(cd "$logging_ckpt" && pwd -P)" "$out/logger/replica-1"
  logger=(LEARNING=frozen AGENT_FROZEN_EPSILON="$LOGGING_EPSILON" CHECKPOINTS="$out/logger")
  echo "==> the logging DQN: $logging_ckpt, frozen, epsilon $LOGGING_EPSILON"
fi
echo "==> logging: $LOGGING (epsilon $LOGGING_EPSILON), $EPISODES episodes of $DATASET through Kafka, archived"
env "${logger[@]}" POLICY="$LOGGING" AGENT_EPSILON="$LOGGING_EPSILON" ARCHIVE_QUERIES=0 scripts/sim.sh
env_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["env_id"])' target/sim/summary.json)
echo "==> archived run: $env_id"

targets=()
IFS=, read -ra targets <<< "$TARGETS"
[[ -n ${DQN_CHECKPOINT:-} ]] && targets+=(dqn)
for t in "${targets[@]}"; do
  echo
  echo "==> agent-svc ope --policy $t"
  flags=(--policy "$t" --epsilon "$TARGET_EPSILON")
  [[ $t == dqn ]] && flags+=(--checkpoint-dir "$DQN_CHECKPOINT")
  "$bin/agent-svc" ope --env fashion --env-id "$env_id" --truth "${flags[@]}" \
    --json "$out/$t.json" --png "$out/$t.png"
done

python3 - "$out" "$env_id" "${targets[@]}" << 'EOF'
import json, sys
out, env_id, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = []
for t in targets:
    r = json.load(open(f"{out}/{t}.json"))
    truth = r["truth"]
    for e in r["evaluation"]["estimates"]:
        lo, hi = e["lo"], e["hi"]
        rows.append({
            "target": r["target"], "estimator": e["estimator"], "estimate": e["value"], "low": lo, "high": hi,
            "truth": truth, "relative_error": (e["value"] - truth) / truth if truth else None,
            "covers": lo <= truth <= hi, "width": hi - lo,
            "ess_fraction": r["evaluation"]["support"]["ess_fraction"],
            "warnings": r["evaluation"]["warnings"],
            "decisions": r["evaluation"]["rows"],
            "logged": r["evaluation"]["logged"]["value"],
        })
doc = {"env_id": env_id, "rows": rows}
json.dump(doc, open(f"{out}/ope-fashion.json", "w"), indent=2)
print(f"\n{'target':<55} {'est.':<6} {'estimate':>9} {'95% interval':>21} {'truth':>9} {'error':>8} {'covers':>6} {'ESS':>6}")
for r in rows:
    err = "n/a" if r["relative_error"] is None else f"{r['relative_error']:+.1%}"
    print(f"{r['target']:<55} {r['estimator']:<6} {r['estimate']:>9.5f} [{r['low']:>9.5f}, {r['high']:>9.5f}] "
          f"{r['truth']:>9.5f} {err:>8} {'yes' if r['covers'] else 'no':>6} {r['ess_fraction']:>6.1%}")
print(f"\nwrote {out}/ope-fashion.json and a PNG per target")
EOF
