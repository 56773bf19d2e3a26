#!/usr/bin/env bash
# Prints the folder of the full-size generated dataset (the 2018 Amazon Fashion format at full
# size: 883,636 reviews, 186,637 products in the metadata; `env-svc generate --reviews 883636
# --products 186637 --seed 42`), writing it into the cache the first time (about a minute).
# Used by `make bench` and `make eval SIZE=full`. Needs env-svc built (release): $1 is its path.
set -euo pipefail
bin=${1:?usage: scripts/fullsize.sh path/to/env-svc}
full=${STREAMREC_CACHE:-$HOME/.cache/streamrec}/fullsize-seed42
if [[ ! -f $full/.complete ]]; then
  echo "==> writing the full-size generated dataset into $full (once)" >&2
  "$bin" generate --out "$full" --reviews 883636 --products 186637 --seed 42 >&2
  touch "$full/.complete"
fi
echo "$full"
