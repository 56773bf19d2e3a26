#!/usr/bin/env bash
# Prints the folder of `make eval`'s default dataset, written by `env-svc generate` when missing
# or made with other parameters (the output is byte-identical per parameters): 64,000 reviews,
# 1,500 products, seed 42, which keeps 1,493 users, 1,204 train and 289 test.
#   scripts/eval_dataset.sh <path to env-svc>
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=target/eval/dataset
gen=(--reviews 64000 --products 1500 --seed 42)
if [[ "$(cat "$dataset/.generated" 2> /dev/null)" != "${gen[*]}" ]]; then
  "$1" generate --out "$dataset" "${gen[@]}" >&2
  echo "${gen[*]}" > "$dataset/.generated"
fi
echo "$dataset"
