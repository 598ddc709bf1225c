#!/bin/sh
# The official image's tool scripts, by name (this one file is installed under each name):
# kafka-topics.sh, kafka-broker-api-versions.sh, kafka-consumer-groups.sh (the runbook's
# lag checks: docs/operations.md), kafka-get-offsets.sh and kafka-configs.sh. The classes
# are in the kafka-tools and kafka jars the broker runs from.
set -eu
case "$(basename "$0")" in
    kafka-topics.sh) tool=org.apache.kafka.tools.TopicCommand ;;
    kafka-broker-api-versions.sh) tool=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    kafka-consumer-groups.sh) tool=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    kafka-get-offsets.sh) tool=org.apache.kafka.tools.GetOffsetShell ;;
    kafka-configs.sh) tool=kafka.admin.ConfigCommand ;;
    *) echo "$0: unknown tool" >&2; exit 2 ;;
esac
exec java -Xmx128m -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.xml \
    -cp '/opt/kafka/libs/*' "$tool" "$@"
