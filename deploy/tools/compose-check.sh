#!/bin/sh
# Validates docker-compose.yml without a Docker engine: compose-go (the parser of docker compose v2) plus the
# project's rules, see compose-check/main.go. Builds the checker once into the cache, rebuilding it when its
# sources are newer. Usage: deploy/tools/compose-check.sh [compose-check flags]; exits non-zero on failure.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
src="$root/deploy/tools/compose-check"
bin="${STREAMREC_CACHE:-$HOME/.cache/streamrec}/bin/compose-check"

stale=false
if [ ! -x "$bin" ]; then
  stale=true
else
  for f in "$src/main.go" "$src/go.mod" "$src/go.sum"; do
    [ "$f" -nt "$bin" ] && stale=true
  done
fi
if $stale; then
  command -v go > /dev/null || { echo "compose-check: needs Go (1.26) to build the checker" >&2; exit 1; }
  mkdir -p "$(dirname "$bin")"
  echo "compose-check: building $bin" >&2
  (cd "$src" && go build -trimpath -o "$bin.tmp" . && mv "$bin.tmp" "$bin")
fi

cd "$root"
exec "$bin" -f docker-compose.yml "$@"
