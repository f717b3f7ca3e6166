#!/usr/bin/env bash
# The distribution's bin/kafka-acls.sh (org.apache.kafka.tools.AclCommand), run from the Maven
# Central jars of kafka/pom.xml plus org.apache.kafka:kafka-tools of the same version, resolved
# once into $KAFKA_HOME/tools. Same arguments as the distribution's script, e.g.
#
#   kafka/kafka-acls.sh --bootstrap-server 127.0.0.1:9093 --command-config admin.properties --list
#
# docs/kafka-security.md's commands are run with it by tests/e2e/test_kafka_secured.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_HOME="${KAFKA_HOME:-$(dirname "$HERE")/.local/kafka}"
KAFKA_LIB="${KAFKA_LIB:-$KAFKA_HOME/lib}"
TOOLS="$KAFKA_HOME/tools"

KAFKA_HOME="$KAFKA_HOME" KAFKA_LIB="$KAFKA_LIB" "$HERE/run.sh" lib
version="$(basename "$(compgen -G "$KAFKA_LIB/kafka-clients-*.jar" | head -1)" .jar)"
version="${version#kafka-clients-}"
if ! compgen -G "$TOOLS/kafka-tools-$version.jar" >/dev/null; then
  echo "kafka-acls.sh: resolving org.apache.kafka:kafka-tools:$version into $TOOLS" >&2
  mvn -q -B -Dstyle.color=never ${KAFKA_M2_REPO:+-Dmaven.repo.local="$KAFKA_M2_REPO"} dependency:copy \
      -Dartifact="org.apache.kafka:kafka-tools:$version" -DoutputDirectory="$TOOLS" >&2
fi
exec java -Xmx256m -Dlog4j2.level=WARN -cp "$KAFKA_LIB/*:$TOOLS/*" org.apache.kafka.tools.AclCommand "$@"
