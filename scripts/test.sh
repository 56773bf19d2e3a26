#!/usr/bin/env bash
# `make test`: checks what it needs, starts the local stack unless it is already up, runs the
# lints, the compose check, the Kubernetes check and every test, and stops the stack again if it
# started it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo > /dev/null || { echo "test: cargo not found; install Rust (rustup) first" >&2; exit 1; }
command -v go > /dev/null || { echo "test: go not found; the compose check needs Go 1.23+" >&2; exit 1; }

started=""
stop_stack() { [[ -n $started ]] && deploy/local/stack.sh down || true; }
trap stop_stack EXIT

step() { printf '\n==> %s\n' "$*"; }

step "libtorch (PyPI torch 2.13.0, cached)"
scripts/libtorch.sh

step "build"
cargo build --workspace --all-targets --locked

step "lint (rustfmt, clippy -D warnings)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docker-compose.yml (compose-go, no engine needed)"
deploy/tools/compose-check.sh

step "local stack"
if deploy/local/stack.sh is-up; then
  echo "already up; leaving it running afterwards"
  deploy/local/stack.sh up # idempotent: makes sure topics, schemas and keyspace exist
else
  started=1
  deploy/local/stack.sh up
fi

# After the stack: its script installs the JDK and Maven the check also needs (Strimzi's CRDs).
step "Kubernetes manifests: both overlays on a real kube-apiserver (scripts/k8s-check.sh)"
scripts/k8s-check.sh

step "tests"
log=$(mktemp)
status=0
# The two tests that kill a part of the stack (a broker, Cassandra) and restart it run last: a
# JVM just restarted loads the machine for a minute or two, which would slow every later test.
restarts=(--test fault_broker --test archiver_fault)
cargo test --workspace --locked --no-fail-fast -- \
  --skip broker_killed_mid_run_loses_no_step --skip cassandra_stopped_during_a_run 2>&1 | tee "$log" || status=$?
step "tests that restart a part of the stack"
cargo test -p streamrec-tests --locked --no-fail-fast "${restarts[@]}" 2>&1 | tee -a "$log" || status=$?
# One closing line over every test binary (cargo prints one `test result:` line per binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\nall tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
