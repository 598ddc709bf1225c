#!/bin/sh
# One-shot: wait for the broker, then create the pipeline's topics (idempotent).
# Runs in the Kafka image (official apache/kafka or deploy/compose/kafka), which both
# have /opt/kafka/bin/kafka-broker-api-versions.sh and kafka-topics.sh.
set -eu

bootstrap=${BOOTSTRAP_SERVERS:-kafka:9092}
partitions=${PARTITIONS:-6}
replication=${REPLICATION_FACTOR:-1}
attempts=${ATTEMPTS:-60}
bin=/opt/kafka/bin

tries=0
until "$bin/kafka-broker-api-versions.sh" --bootstrap-server "$bootstrap" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge "$attempts" ]; then
        echo "create-topics: Kafka at $bootstrap did not answer after $attempts attempts" >&2
        exit 1
    fi
    sleep 2
done

for topic in sensor-data sensor-aggregates sensor-alerts sensor-data.dlq; do
    "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$topic" --partitions "$partitions" --replication-factor "$replication"
done
"$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --list
echo "create-topics: done ($partitions partitions each)"
