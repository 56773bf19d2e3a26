#!/usr/bin/env bash
# `make ope`: off-policy evaluation on the archive, checked against ground truth on RecoGym.
# Logs TRAIN_USERS users with the uniform random policy to train on (the learning targets and
# any learning logging policy are trained on this run only), then TRAIN_USERS other users per
# logging policy through Kafka (the uniform random policy, then organic-count with epsilon 0.2),
# archives the RecoGym topics in Cassandra, A/B-tests each target (organic-count, likelihood, nn)
# on AB_USERS fresh users, and estimates each target's CTR from each archived logging run with
# `agent-svc ope --train-env-id` (IPS, SNIPS, DM, DR, 95% bootstrap intervals over episodes).
#
# Writes target/ope/ope-recogym.json (every estimate, its error and interval width against the
# A/B CTR), a PNG per (logging, target) with the A/B CTR as a dashed line, and the
# *.export.json files `make ope-obp` checks against the Open Bandit Pipeline; prints the table.
#
#   make ope                                           # 5000 + 5000 users, both logging policies
#   TRAIN_USERS=1000 AB_USERS=1000 make ope            # quicker
#   LOGGINGS=random TARGETS=organic-count make ope
#   PROFILE=debug make ope                             # the debug build (no release build needed)
# Any other streamrec-sim ope-recogym flag can follow: scripts/ope.sh --bootstrap 2000
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

TRAIN_USERS=${TRAIN_USERS:-5000} AB_USERS=${AB_USERS:-5000} SEED=${SEED:-42} PRODUCTS=${PRODUCTS:-10}
LOGGINGS=${LOGGINGS:-random,organic-count@epsilon:0.2}
TARGETS=${TARGETS:-organic-count,likelihood,nn}
PROFILE=${PROFILE:-release}

scripts/libtorch.sh
echo "==> building ($PROFILE)"
if [[ $PROFILE == release ]]; then
  cargo build --release --locked -p env-svc -p agent-svc -p sim -p archiver
else
  cargo build --locked -p env-svc -p agent-svc -p sim -p archiver
fi
bin=${CARGO_TARGET_DIR:-target}/$PROFILE
echo "==> stack"
deploy/local/stack.sh up
"$bin/archiver" init > /dev/null
echo "==> streamrec-sim ope-recogym"
start=$(date +%s)
"$bin/streamrec-sim" ope-recogym \
  --recogym-products "$PRODUCTS" --recogym-seed "$SEED" --train-users "$TRAIN_USERS" --recogym-users "$AB_USERS" \
  --loggings "$LOGGINGS" --policies "$TARGETS" --ope-out target/ope "$@"
echo "make ope: $(($(date +%s) - start)) s"
