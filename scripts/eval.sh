#!/usr/bin/env bash
# `make eval`: trains every policy on the train users for a fixed budget and seed, evaluates each
# greedily on the held-out test users, prints the table and writes target/eval/report.json and
# target/eval/training_returns.png.   DATASET=target/eval/dataset TRAIN_EPISODES=3000 SEED=0
#
# SIZE=full evaluates on the full-size generated set instead (883,636 reviews; every one of the
# metadata's 186,637 products in the action space, ALL_PRODUCTS=true), written once into the
# cache by scripts/fullsize.sh; its report goes to target/eval-full/ (EVAL_OUT sets the folder).
# The default dataset is a synthetic one written by `env-svc generate` (64,000 reviews, 1,500
# products, seed 42: the generator of data/sample with four times its reviews), which keeps
# 1,493 users: 1,204 train, 289 test. The committed sample keeps only 75 test users, whose 95%
# intervals (about +-0.08 on the reward rate) are too wide to separate policies 0.1 apart.
# DATASET=data/sample evaluates on the sample instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/libtorch.sh
cargo build --release --locked -p sim -p env-svc
bin=${CARGO_TARGET_DIR:-target}/release
if [[ ${SIZE:-} == full ]]; then
  # The full-size generated set with every product of its metadata in the action space.
  [[ -z ${DATASET:-} ]] || { echo "eval: SIZE=full picks its own dataset; unset DATASET" >&2; exit 2; }
  DATASET=$(scripts/fullsize.sh "$bin/env-svc")
  export DATASET ALL_PRODUCTS=true
  export EVAL_OUT=${EVAL_OUT:-target/eval-full}
elif [[ -n ${SIZE:-} ]]; then
  echo "eval: SIZE is 'full' or unset, not '$SIZE'" >&2
  exit 2
fi
[[ -n ${DATASET:-} ]] || DATASET=$(scripts/eval_dataset.sh "$bin/env-svc")
export DATASET
# The DQN in evaluation: `--dqn-preset fashion` (the MLP network with one 64-unit layer, since
# the paper's LSTM learns at about 20 updates/s on one core here, too slow for this budget; gamma
# 0: recommendations do not change the user's next product, so nothing is gained by
# bootstrapping; the wide table of product-to-product Q-value offsets; full-feedback hindsight
# with decay 0.6 and the product id token), the agent waiting for the learner (no update
# skipped). Override with EVAL_DQN_FLAGS; docs/DQN.md has the sweep.
read -r -a dqn_flags <<< "${EVAL_DQN_FLAGS:---dqn-preset fashion --dqn-backpressure}"
# The report's folder: EVAL_OUT (target/eval; target/eval-full with SIZE=full).
"$bin/streamrec-sim" eval --quiet "${dqn_flags[@]}" "$@"
