#!/bin/sh
# Start one KRaft node configured like the official apache/kafka image: every KAFKA_*
# variable becomes a server property (KAFKA_NODE_ID -> node.id; "__" -> "_", "___" -> "-"),
# the log dir is formatted once with CLUSTER_ID, then the broker replaces this shell.
set -eu

conf_dir=${KAFKA_CONFIG_DIR:-/tmp/kafka-config}
conf="$conf_dir/server.properties"
mkdir -p "$conf_dir"

env | grep '^KAFKA_' \
    | grep -v -E '^KAFKA_(HEAP_OPTS|OPTS|JVM_PERFORMANCE_OPTS|LOG4J_OPTS|CONFIG_DIR)=' \
    | while IFS='=' read -r name value; do
        key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' \
            | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
        printf '%s=%s\n' "$key" "$value"
    done > "$conf"

# The official image's default, so a volume formatted by one image starts with the other.
cluster_id=${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}
cp='/opt/kafka/libs/*'
log4j="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.xml"

java -Xmx256m "$log4j" -cp "$cp" kafka.tools.StorageTool format -g -t "$cluster_id" -c "$conf"

# shellcheck disable=SC2086 # the *_OPTS variables are word lists on purpose
exec java ${KAFKA_HEAP_OPTS:-} \
    ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true} \
    ${KAFKA_OPTS:-} "$log4j" -cp "$cp" kafka.Kafka "$conf"
