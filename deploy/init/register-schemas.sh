#!/bin/sh
# Registers the JSON Schemas of the value subjects (every environment's states and actions) and
# sets their compatibility level.
# Shared by deploy/local/stack.sh and the `init-schemas` service of docker-compose.yml.
# Idempotent: registering an identical schema returns the existing id.
#   SCHEMA_REGISTRY_URL  base of the Confluent Schema Registry API
#                        (Confluent: http://host:8081, Apicurio: http://host:8081/apis/ccompat/v7)
#   SCHEMA_DIR           folder of the generated schemas (default: ../../protocol/schemas)
#   TOPICS_ENV           path of deploy/topics.env
# With --list, prints the subjects it would register and their schema files, one pair per line,
# and touches nothing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
topics_env=${TOPICS_ENV:-$here/../topics.env}
. "$topics_env"
SCHEMA_DIR=${SCHEMA_DIR:-$here/../../protocol/schemas}
[ "${1:-}" = --list ] || url=${SCHEMA_REGISTRY_URL:?set SCHEMA_REGISTRY_URL}
ct='Content-Type: application/vnd.schemaregistry.v1+json'

# JSON-escape a schema file into a string literal with sh tools only (the Confluent images have no jq).
# Newlines between JSON tokens are insignificant, and JSON strings cannot hold raw newlines.
escape() { tr -d '\n\r' < "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

# Every request has a deadline and is retried: a registry that never answers one request (seen
# once after a broker restart) fails the script with curl's error instead of hanging it.
curl() { command curl --max-time 30 --retry 3 --retry-all-errors "$@"; }

register() { # subject file
  [ -f "$2" ] || { echo "register-schemas: missing schema file $2 (run 'make schemas')" >&2; exit 1; }
  body="{\"schemaType\":\"JSON\",\"schema\":\"$(escape "$2")\"}"
  curl -fsS -X PUT -H "$ct" --data "{\"compatibility\":\"$SCHEMA_COMPATIBILITY\"}" "$url/config/$1" > /dev/null
  id=$(curl -fsS -X POST -H "$ct" --data "$body" "$url/subjects/$1/versions")
  echo "subject $1: $id compatibility=$SCHEMA_COMPATIBILITY"
}

# Every state and action topic of topics.env (variables named *STATE_TOPIC, *ACTION_TOPIC) has a
# value subject; dead-letter topics carry raw bytes and have none.
for var in $(sed -n 's/^\([A-Z0-9_]*\(STATE\|ACTION\)_TOPIC\)=.*/\1/p' "$topics_env"); do
  eval "topic=\$$var"
  if [ "${1:-}" = --list ]; then echo "$topic-value $SCHEMA_DIR/$topic-value.json"; continue; fi
  register "$topic-value" "$SCHEMA_DIR/$topic-value.json"
done
