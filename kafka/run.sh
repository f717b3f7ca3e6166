#!/usr/bin/env bash
# Run a single-node Apache Kafka 4.x (KRaft, combined broker+controller) on loopback,
# from Maven Central jars (kafka/pom.xml) -- no distribution tarball.
#
#   kafka/run.sh lib                 resolve the jars into $KAFKA_LIB (if missing)
#   kafka/run.sh prepare [FMT_ARGS]  lib + write server.properties (if missing) + format storage (if unformatted)
#   kafka/run.sh start   [FMT_ARGS]  prepare, then exec the broker in the foreground (the pid becomes java's)
#
# FMT_ARGS are passed to `kafka.tools.StorageTool format` on first format only,
# e.g. --add-scram 'SCRAM-SHA-512=[name=admin,password=admin-secret]'.
#
# Environment (all optional):
#   KAFKA_HOME       default <repo>/.local/kafka (git-ignored)
#   KAFKA_LIB        default $KAFKA_HOME/lib       -- the broker classpath
#   KAFKA_DATA       default $KAFKA_HOME/data      -- server.properties, kraft-logs/, logs/server.log
#   KAFKA_PORT       broker port      (default: a free port, chosen once and kept in server.properties)
#   KAFKA_CTRL_PORT  controller port  (idem)
#   KAFKA_HEAP_OPTS  default "-Xms128m -Xmx512m"
#   KAFKA_M2_REPO    Maven local repo (default: Maven's own, ~/.m2/repository)
# A server.properties already in $KAFKA_DATA is used as is (prove_secure.py writes its own).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_HOME="${KAFKA_HOME:-$(dirname "$HERE")/.local/kafka}"
KAFKA_LIB="${KAFKA_LIB:-$KAFKA_HOME/lib}"
KAFKA_DATA="${KAFKA_DATA:-$KAFKA_HOME/data}"
PROPS="$KAFKA_DATA/server.properties"
CMD="${1:-start}"; shift || true

log() { echo "run.sh: $*" >&2; }

resolve_lib() {
  # kafka_2.13-*.jar is the last thing we need; its presence means the copy completed.
  if compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" >/dev/null; then return; fi
  log "resolving Kafka jars into $KAFKA_LIB"
  local tmp="$KAFKA_LIB.tmp.$$"
  rm -rf "$tmp"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" ${KAFKA_M2_REPO:+-Dmaven.repo.local="$KAFKA_M2_REPO"} \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
  rm -rf "$KAFKA_LIB"; mkdir -p "$(dirname "$KAFKA_LIB")"; mv "$tmp" "$KAFKA_LIB"
}

free_port() {  # ask the kernel for a free loopback port
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

write_props() {
  [[ -f "$PROPS" ]] && return
  mkdir -p "$KAFKA_DATA"
  local port="${KAFKA_PORT:-$(free_port)}" cport="${KAFKA_CTRL_PORT:-$(free_port)}"
  while [[ "$cport" == "$port" ]]; do cport="$(free_port)"; done
  log "writing $PROPS (broker 127.0.0.1:$port, controller 127.0.0.1:$cport)"
  cat >"$PROPS" <<EOF
# KRaft combined mode: this one JVM is both the broker and the (only) controller.
process.roles=broker,controller
node.id=1
# Dynamic quorum (KIP-853), as the 4.x quickstart does: formatted with --standalone.
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA/kraft-logs
num.partitions=1
default.replication.factor=1
# Topics are created explicitly (as docker-compose.yml does).
auto.create.topics.enable=false
# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a crash (SIGKILL) the restarted broker is refused (DuplicateBrokerRegistration)
# until the dead incarnation's session expires: ~14 s to ready with the 9 s default, ~6 s so.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=1000
EOF
}

format_storage() {
  local logdir
  logdir="$(sed -n 's/^log\.dirs=//p' "$PROPS" | cut -d, -f1)"
  [[ -n "$logdir" ]] || { log "no log.dirs in $PROPS"; exit 1; }
  [[ -f "$logdir/meta.properties" ]] && return
  # A cluster id is 16 random bytes, base64url without padding (what `StorageTool
  # random-uuid` prints); Kafka never hands out one that starts with '-'.
  local cid="-"
  while [[ "$cid" == -* ]]; do cid="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"; done
  log "formatting $logdir (cluster id $cid)"
  java -Xmx256m -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DATA/logs" \
       -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format \
       --config "$PROPS" --cluster-id "$cid" --standalone "$@"
}

case "$CMD" in
  lib)     resolve_lib ;;
  prepare) resolve_lib; write_props; format_storage "$@" ;;
  start)
    resolve_lib; write_props; format_storage "$@"
    mkdir -p "$KAFKA_DATA/logs"
    # Same GC flags as the distribution's kafka-run-class.sh; smaller heap than its 1G default.
    exec java ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} \
      -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DATA/logs" \
      -cp "$KAFKA_LIB/*" kafka.Kafka "$PROPS" ;;
  *) echo "usage: $0 {lib|prepare|start} [storage-format-args...]" >&2; exit 2 ;;
esac
