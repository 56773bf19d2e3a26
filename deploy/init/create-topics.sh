#!/bin/sh
# Creates the project's topics, idempotently. Shared by deploy/local/stack.sh and the
# `init-topics` service of docker-compose.yml, so both create exactly the same topics.
#   KAFKA_TOPICS_CMD   the kafka-topics command (default: kafka-topics, as in the Confluent images)
#   BOOTSTRAP_SERVERS  broker list (default 127.0.0.1:9092)
#   TOPICS_ENV         path of deploy/topics.env (default: beside this script, ../topics.env)
#   TOPIC_PARTITIONS   overrides the partition count of topics.env
# With --list, prints the topics it would create, one per line, and touches nothing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
partitions_override=${TOPIC_PARTITIONS:-}
topics_env=${TOPICS_ENV:-$here/../topics.env}
. "$topics_env"
[ -n "$partitions_override" ] && TOPIC_PARTITIONS=$partitions_override
KAFKA_TOPICS_CMD=${KAFKA_TOPICS_CMD:-kafka-topics}
BOOTSTRAP_SERVERS=${BOOTSTRAP_SERVERS:-127.0.0.1:9092}

# Every variable of topics.env named *_TOPIC is a topic (an environment declares its three there);
# the weights topic (*WEIGHTS_TOPIC) is compacted and has one partition.
for var in $(sed -n 's/^\([A-Z0-9_]*_TOPIC\)=.*/\1/p' "$topics_env"); do
  eval "topic=\$$var"
  if [ "${1:-}" = --list ]; then echo "$topic"; continue; fi
  case $var in
    *WEIGHTS_TOPIC) partitions=1 cleanup=compact ;;
    *) partitions=$TOPIC_PARTITIONS cleanup=delete ;;
  esac
  # shellcheck disable=SC2086 # KAFKA_TOPICS_CMD is a command line on purpose
  $KAFKA_TOPICS_CMD --bootstrap-server "$BOOTSTRAP_SERVERS" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" \
    --replication-factor "$TOPIC_REPLICATION_FACTOR" \
    --config min.insync.replicas="$TOPIC_MIN_ISR" \
    --config unclean.leader.election.enable=false \
    --config cleanup.policy="$cleanup"
  echo "topic $topic: partitions=$partitions replication=$TOPIC_REPLICATION_FACTOR min.insync.replicas=$TOPIC_MIN_ISR cleanup.policy=$cleanup"
done
