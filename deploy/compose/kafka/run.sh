#!/bin/sh
# Start one KRaft node configured like the official apache/kafka image: every KAFKA_*
# variable becomes a server property (KAFKA_NODE_ID -> node.id; "__" -> "_", "___" -> "-"),
# the log dir is formatted once with CLUSTER_ID, then the broker replaces this shell.
#
# SCRAM users (docker-compose.secure.yml): with SCRAM_USERNAME and SCRAM_PASSWORD_FILE (a
# file holding the password, e.g. /run/secrets/sasl_password) the format also writes that
# user's credentials for each of SCRAM_MECHANISMS (default SCRAM-SHA-512) into the metadata
# log, so they exist before any client connects. Like the cluster id they are written only
# when the log dir is formatted, i.e. on a fresh volume: a changed password needs a fresh
# volume (or kafka-configs.sh --alter --add-config). During the format the password is on
# the format command's command line, inside the container only.
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

set -- format -g -t "$cluster_id" -c "$conf"
if [ -n "${SCRAM_USERNAME:-}${SCRAM_PASSWORD_FILE:-}" ]; then
    if [ -z "${SCRAM_USERNAME:-}" ] || [ -z "${SCRAM_PASSWORD_FILE:-}" ]; then
        echo "run.sh: SCRAM_USERNAME and SCRAM_PASSWORD_FILE go together (set both or neither)" >&2
        exit 2
    fi
    if ! [ -f "$SCRAM_PASSWORD_FILE" ] || ! [ -r "$SCRAM_PASSWORD_FILE" ]; then
        echo "run.sh: SCRAM_PASSWORD_FILE=$SCRAM_PASSWORD_FILE is not a readable file" \
            "(for docker-compose.secure.yml: make compose-secrets)" >&2
        exit 2
    fi
    # $(...) drops the trailing newline, as the services do with *_PASSWORD_FILE.
    scram_password=$(cat "$SCRAM_PASSWORD_FILE")
    # The format's [name=...,password=...] syntax has no quoting: keep to safe characters.
    case "$SCRAM_USERNAME$scram_password" in
        *[!A-Za-z0-9._~-]*)
            echo "run.sh: SCRAM_USERNAME and the password in SCRAM_PASSWORD_FILE may hold only" \
                "letters, digits and . _ ~ - (e.g. python3 -c 'import secrets;" \
                "print(secrets.token_urlsafe(32))')" >&2
            exit 2 ;;
    esac
    if [ -z "$scram_password" ]; then
        echo "run.sh: SCRAM_PASSWORD_FILE=$SCRAM_PASSWORD_FILE is empty" >&2
        exit 2
    fi
    log_dirs=${KAFKA_LOG_DIRS:-/nonexistent}
    if [ -e "${log_dirs%%,*}/meta.properties" ]; then
        echo "run.sh: the log dir is formatted already, so its SCRAM users stay as they were" \
            "formatted (SCRAM_PASSWORD_FILE takes effect on a fresh volume only)" >&2
    fi
    for mechanism in $(printf '%s' "${SCRAM_MECHANISMS:-SCRAM-SHA-512}" | tr ',' ' '); do
        set -- "$@" --add-scram "$mechanism=[name=$SCRAM_USERNAME,password=$scram_password]"
    done
fi
java -Xmx256m "$log4j" -cp "$cp" kafka.tools.StorageTool "$@"

# The broker runs as this shell's child, not in its place: a JVM stopped by SIGTERM exits
# 143 even after a clean shutdown, and `docker compose stop` should show a clean stop as
# exit 0. So SIGTERM/SIGINT are passed on, and 143 after them becomes 0; any other exit
# status (a crash, a failed start) is kept.
stopping=0
trap 'stopping=1; kill -TERM "$pid" 2>/dev/null || :' TERM INT
# shellcheck disable=SC2086 # the *_OPTS variables are word lists on purpose
java ${KAFKA_HEAP_OPTS:-} \
    ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true} \
    ${KAFKA_OPTS:-} "$log4j" -cp "$cp" kafka.Kafka "$conf" &
pid=$!
set +e
while :; do
    wait "$pid"
    status=$?
    # wait returns early (128 + signal) when a trapped signal arrives: wait again.
    kill -0 "$pid" 2>/dev/null || break
done
if [ "$stopping" = 1 ] && [ "$status" = 143 ]; then
    status=0
fi
exit "$status"
