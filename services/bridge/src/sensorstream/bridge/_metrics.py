"""The bridge's Prometheus metrics, created once and bound to their label children.

Names follow ``sensorstream_bridge_<what>_<unit>``. Labels are bounded: ``reason`` is a
dead-letter reason code, ``operation`` one of a few names fixed in code. The forwarding
loop increments by a round's size, never per message, and never looks a label child up
per message (:meth:`BridgeMetrics.dead_letters` binds each reason once).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from sensorstream.schema import DeadLetterReason, RejectReason

__all__ = [
    "METRIC_NAMES",
    "RETRY_CONNECT_MQTT",
    "RETRY_ENQUEUE_BATCH",
    "RETRY_START_PRODUCER",
    "BridgeMetrics",
]

_PREFIX = "sensorstream_bridge_"

METRIC_NAMES = (
    "sensorstream_bridge_messages_received_total",
    "sensorstream_bridge_records_produced_total",
    "sensorstream_bridge_dead_letters_total",
    "sensorstream_bridge_duplicates_dropped_total",
    "sensorstream_bridge_messages_acked_total",
    "sensorstream_bridge_acks_abandoned_total",
    "sensorstream_bridge_messages_in_flight",
    "sensorstream_bridge_produce_latency_seconds",
    "sensorstream_bridge_mqtt_connected",
    "sensorstream_bridge_mqtt_reconnects_total",
    "sensorstream_bridge_reading_paused",
    "sensorstream_bridge_retries_total",
    "sensorstream_bridge_up",
    "sensorstream_bridge_build_info",
)
"""Every metric family this service exports (besides ``process_*``)."""

RETRY_CONNECT_MQTT = "connect mqtt"
"""``retries_total{operation}`` of connecting (and subscribing) to the MQTT broker."""
RETRY_START_PRODUCER = "start producer"
"""``retries_total{operation}`` of starting the Kafka producer."""
RETRY_ENQUEUE_BATCH = "enqueue batch"
"""``retries_total{operation}`` of handing a batch to the Kafka client (broker away)."""
_RETRY_OPERATIONS = (RETRY_CONNECT_MQTT, RETRY_START_PRODUCER, RETRY_ENQUEUE_BATCH)
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class BridgeMetrics:
    """All bridge metrics, registered in ``registry`` (the default one in production)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, version: str = "0") -> None:
        def name(what: str) -> str:
            return _PREFIX + what

        self.messages_received = Counter(
            name("messages_received"), "MQTT messages received.", registry=registry
        )
        self.records_produced = Counter(
            name("records_produced"),
            "Valid readings Kafka acknowledged on the input topic.",
            registry=registry,
        )
        self._dead_letters = Counter(
            name("dead_letters"),
            "Bad payloads Kafka acknowledged on the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self._reason_children: dict[str, Counter] = {}
        for reason in RejectReason:
            self.dead_letters(DeadLetterReason(reason))
        self.duplicates_dropped = Counter(
            name("duplicates_dropped"),
            "Redelivered MQTT messages whose event was already forwarded (not produced again).",
            registry=registry,
        )
        self.messages_acked = Counter(
            name("messages_acked"),
            "MQTT messages acknowledged (PUBACK) after Kafka acknowledged them.",
            registry=registry,
        )
        self.acks_abandoned = Counter(
            name("acks_abandoned"),
            "Messages whose PUBACK could not be sent because their MQTT connection ended "
            "first (the broker redelivers them).",
            registry=registry,
        )
        self.messages_in_flight = Gauge(
            name("messages_in_flight"),
            "MQTT messages received and not yet acknowledged.",
            registry=registry,
        )
        self.produce_latency = Histogram(
            name("produce_latency_seconds"),
            "Seconds from handing a round of records to Kafka to its acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            name("mqtt_connected"), "1 while connected and subscribed to MQTT.", registry=registry
        )
        self.mqtt_reconnects = Counter(
            name("mqtt_reconnects"),
            "MQTT connections established again after one was lost.",
            registry=registry,
        )
        self.reading_paused = Gauge(
            name("reading_paused"),
            "1 while reading from MQTT is paused (--max-in-flight reached).",
            registry=registry,
        )
        self.retries = Counter(
            name("retries"),
            "Retries after a retriable error, by operation.",
            ["operation"],
            registry=registry,
        )
        for operation in _RETRY_OPERATIONS:
            self.retries.labels(operation=operation)
        self.up = Gauge(name("up"), "1 while the bridge is running.", registry=registry)
        self.build_info = Gauge(
            name("build_info"), "Build information; always 1.", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)

    def dead_letters(self, reason: DeadLetterReason) -> Counter:
        """The ``dead_letters_total`` child for ``reason``, bound once and reused."""
        child = self._reason_children.get(reason)
        if child is None:
            child = self._dead_letters.labels(reason=reason.value)
            self._reason_children[reason] = child
        return child
