#!/usr/bin/env bash
# `make eval`: trains every policy on the train users for a fixed budget and seed, evaluates each
# greedily on the held-out test users, prints the table and writes target/eval/report.json and
# target/eval/training_returns.png.   DATASET=data/sample TRAIN_EPISODES=3000 SEED=0
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/libtorch.sh
cargo build --release --locked -p sim
# The DQN in evaluation: the MLP network with one 256-unit layer (the paper's LSTM learns at
# about 20 updates/s on one core here, too slow for this budget), the agent waiting for the
# learner (no update skipped), and gamma 0: recommendations do not change the user's next
# product, so nothing is gained by bootstrapping. Full-feedback hindsight (decay 0.6) and the
# product id token are the defaults. Override with EVAL_DQN_FLAGS; docs/DQN.md has the sweep.
read -r -a dqn_flags <<< "${EVAL_DQN_FLAGS:---dqn-net mlp --dqn-hidden 256 --dqn-backpressure --dqn-gamma 0 --dqn-lr 0.003 --dqn-eps-decay-steps 3000}"
"${CARGO_TARGET_DIR:-target}/release/streamrec-sim" eval --quiet --out target/eval "${dqn_flags[@]}" "$@"
