#!/usr/bin/env bash
# `make recogym`: the reference paper's RecoGym experiment (Table 1, Fig 4) through the pipeline.
# RecoGym's A/B protocol on reco-gym-v1 with 10 products: 5000 users logged by the uniform random
# policy, every policy trained on that log, then the same 5000 A/B users served by each, over
# Kafka (env and agent in one process, talking only through the recogym_* topics of the local
# stack) and in process (bounded channels; logs from recogym::generate_logs). CTR = Beta
# posterior median with its 95% interval, counted at the env (impressions = recommendations
# answered, clicks = rewards).
#
# Writes target/recogym/ab.json (Kafka run), ab-memory.json (in-process run), ctr.png and
# ctr-memory.png (bar charts with 95% whiskers), runs.json (env ids, clicks, timings); prints
# the tables.
#
#   PRODUCTS=10 TRAIN_USERS=5000 AB_USERS=5000 SEED=42 make recogym
#   TRANSPORTS=memory POLICIES=random,likelihood make recogym     # quicker: no stack needed
#   RECOGYM_DQN_FLAGS="--dqn-net lstm" make recogym                # other DQN settings
# Any other streamrec-sim recogym flag can follow: scripts/recogym.sh --concurrency 512
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

PRODUCTS=${PRODUCTS:-10} TRAIN_USERS=${TRAIN_USERS:-5000} AB_USERS=${AB_USERS:-5000} SEED=${SEED:-42}
TRANSPORTS=${TRANSPORTS:-kafka,memory}
POLICIES=${POLICIES:-random,organic-count,user-count,likelihood,nn,dqn}
# The DQN on RecoGym: the MLP network (mean of the view tokens' embeddings), gamma 0 (a click
# is paid at once and the recommendation does not move the user), trained offline on the log
# with a quarter gradient step per logged recommendation.
read -r -a dqn_flags <<< "${RECOGYM_DQN_FLAGS:---dqn-preset recogym}"

scripts/libtorch.sh
echo "==> building (release)"
cargo build --release --locked -p sim
if [[ ,$TRANSPORTS, == *,kafka,* ]]; then
  echo "==> stack"
  deploy/local/stack.sh up
fi
echo "==> streamrec-sim recogym"
start=$(date +%s)
"${CARGO_TARGET_DIR:-target}/release/streamrec-sim" recogym \
  --recogym-products "$PRODUCTS" --recogym-seed "$SEED" --train-users "$TRAIN_USERS" --recogym-users "$AB_USERS" \
  --transports "$TRANSPORTS" --policies "$POLICIES" --out target/recogym "${dqn_flags[@]}" "$@"
echo "make recogym: $(($(date +%s) - start)) s"
