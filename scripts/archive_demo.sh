#!/usr/bin/env bash
# The end of `make sim`: archives what the simulation left on the default topics (`archiver
# run-once`: group `archiver`, keyspace `streamrec`), then prints three of the queries people run
# in cqlsh (archiver/queries.cql, docs/ARCHIVER.md) with their output: the steps of an episode of
# this simulation, its reward rate (per day when SIM_STARTED_AT, the run's start in seconds since
# the epoch, is not given), the last archive runs. Writes the run's summary to
# target/sim/archive.json. Needs the local stack up (scripts/sim.sh starts it).
# ARCHIVE_QUERIES=0 archives only (no cqlsh queries; `make ope-fashion` runs it so).
#   CASSANDRA_KEYSPACE=streamrec ARCHIVER_GROUP_ID=archiver scripts/archive_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
CQLSH="$CACHE/venv/bin/cqlsh"
KEYSPACE=${CASSANDRA_KEYSPACE:-streamrec}
GROUP=${ARCHIVER_GROUP_ID:-archiver}
CASSANDRA_PORT=${STACK_CASSANDRA_PORT:-9042}
out=target/sim
mkdir -p "$out"

echo "==> building the archiver (release)"
# The same packages as `make sim` builds, so that the features unify alike: a no-op after it.
cargo build --release --locked -p env-svc -p agent-svc -p sim -p archiver
bin=${CARGO_TARGET_DIR:-target}/release

echo "==> archiver run-once: both topics into Cassandra keyspace $KEYSPACE (group $GROUP)"
"$bin/archiver" run-once --no-progress --keyspace "$KEYSPACE" --group-id "$GROUP" --summary-json "$out/archive.json"
[[ ${ARCHIVE_QUERIES:-1} == 0 ]] && exit 0

cql() { "$CQLSH" 127.0.0.1 "$CASSANDRA_PORT" --request-timeout=60 -e "$1" 2>&1 | grep -v '^WARNING: cqlsh was built against'; }

# The query named $1 in archiver/queries.cql (the line after its `-- name:` comment), with the
# example values replaced.
query() {
  local q
  q=$(awk -v name="$1" 'found { print; exit } index($0, "-- " name ":") == 1 { found = 1 }' archiver/queries.cql)
  q=${q//streamrec./$KEYSPACE.}
  q=${q//\'fashion-v1\/3f2a9c#17\'/\'$episode\'}
  q=${q//(\'2025-06-01\', \'2025-06-02\')/(\'$yesterday\', \'$today\')}
  q=${q//\'archiver\'/\'$GROUP\'}
  q=${q//\'2025-06-01T12:00:00.000Z\'/\'$since\'}
  printf '%s' "$q"
}

# An episode of this simulation: its env id from the summary, its first episode.
episode=""
if [[ -f $out/summary.json ]]; then
  env_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["env_id"])' "$out/summary.json" 2> /dev/null || true)
  [[ -n $env_id ]] && episode="$env_id#000000"
fi
if [[ -z $episode ]] || ! cql "SELECT step FROM $KEYSPACE.steps WHERE episode_id = '$episode' LIMIT 1" | grep -q '(1 rows)'; then
  episode=$(cql "SELECT episode_id FROM $KEYSPACE.episodes_by_user LIMIT 1" | awk 'NR > 3 && NF { print $1; exit }')
fi
today=$(date -u +%F)
yesterday=$(date -u -d yesterday +%F 2> /dev/null || date -u -v-1d +%F)
since=""

show() { # title, query
  printf '\n==> %s\ncqlsh> %s\n' "$1" "$2"
  # Long answers: the first 16 rows and the row count.
  cql "$2" | awk 'NR <= 19 || /rows\)$/ { print; next } NR == 20 { print "   ..." }'
}
show "every step of episode $episode: state (product, reward of the previous action), then the action (ps, policy)" \
  "$(query steps)"
if [[ -n ${SIM_STARTED_AT:-} ]]; then
  # This run only: the scan starts at the run's first second inside the day partitions (the
  # whole day, `reward_rate`, reads every state archived that day, RecoGym's included).
  since=$(date -u -d "@$SIM_STARTED_AT" +%FT%T.000Z 2> /dev/null || date -u -r "$SIM_STARTED_AT" +%FT%T.000Z)
  show "reward rate of this run (states archived since $since; one reward per answered step)" "$(query reward_rate_since)"
else
  show "reward rate per day (one reward per answered step)" "$(query reward_rate)"
fi
show "the last archive runs" "$(query last_runs)"
echo
echo "more queries: docs/ARCHIVER.md; cqlsh: $CQLSH 127.0.0.1 $CASSANDRA_PORT"
