#!/bin/sh
# kafka-topics.sh / kafka-broker-api-versions.sh: the official image's scripts, by name.
set -eu
case "$(basename "$0")" in
    kafka-topics.sh) tool=org.apache.kafka.tools.TopicCommand ;;
    kafka-broker-api-versions.sh) tool=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    *) echo "$0: unknown tool" >&2; exit 2 ;;
esac
exec java -Xmx128m -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.xml \
    -cp '/opt/kafka/libs/*' "$tool" "$@"
