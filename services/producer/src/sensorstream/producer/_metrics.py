"""The producer's Prometheus metrics, created once and bound to their label children.

Names follow ``sensorstream_producer_<what>_<unit>`` and are what the dashboards and
alert rules use: rename nothing here without changing those. Labels are bounded
(``kind`` is an error class name, ``operation`` one of a few names fixed in code). Hot
paths increment by a batch's size, never per event, and never look a label child up
per event.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "METRIC_NAMES",
    "RETRY_ENQUEUE_BATCH",
    "RETRY_RESUME_SEQS",
    "RETRY_START_PRODUCER",
    "ProducerMetrics",
]

_PREFIX = "sensorstream_producer_"

METRIC_NAMES = (
    "sensorstream_producer_events_sent_total",
    "sensorstream_producer_events_acked_total",
    "sensorstream_producer_send_errors_total",
    "sensorstream_producer_send_latency_seconds",
    "sensorstream_producer_batch_size_events",
    "sensorstream_producer_target_rate_events_per_second",
    "sensorstream_producer_achieved_rate_events_per_second",
    "sensorstream_producer_behind_schedule_seconds",
    "sensorstream_producer_events_in_flight",
    "sensorstream_producer_retries_total",
    "sensorstream_producer_up",
    "sensorstream_producer_build_info",
)
"""Every metric family this service exports (besides ``process_*``)."""

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Exported at 0 from the start, so dashboards see the series before the first error.
_COMMON_ERROR_KINDS = ("KafkaTimeoutError", "RequestTimedOutError", "KafkaConnectionError", "other")
RETRY_START_PRODUCER = "start producer"
"""``retries_total{operation}`` of starting the Kafka producer."""
RETRY_ENQUEUE_BATCH = "enqueue batch"
"""``retries_total{operation}`` of handing a batch to the Kafka client (broker away)."""
RETRY_RESUME_SEQS = "resume seqs"
"""``retries_total{operation}`` of reading the topic at start-up to resume the seqs."""
# The producer's own retried operations, exported at 0 from the start; the shared
# start-up steps ("connect", "create topics", ...) appear when they first retry.
_RETRY_OPERATIONS = (RETRY_START_PRODUCER, RETRY_RESUME_SEQS, RETRY_ENQUEUE_BATCH)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class ProducerMetrics:
    """All producer metrics, registered in ``registry`` (the default one in production)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, version: str = "0") -> None:
        def name(what: str) -> str:
            return _PREFIX + what

        self.events_sent = Counter(
            name("events_sent"), "Events handed to the Kafka client.", registry=registry
        )
        self.events_acked = Counter(
            name("events_acked"), "Events acknowledged by the broker.", registry=registry
        )
        self._send_errors = Counter(
            name("send_errors"),
            "Events whose batch failed, by error kind.",
            ["kind"],
            registry=registry,
        )
        self._error_children: dict[str, Counter] = {}
        for kind in _COMMON_ERROR_KINDS:
            self.send_errors(kind)
        self.send_latency = Histogram(
            name("send_latency_seconds"),
            "Seconds from enqueueing a batch to its acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            name("batch_size_events"),
            "Events per batch sent to a partition.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.target_rate = Gauge(
            name("target_rate_events_per_second"),
            "Configured rate right now (0 for 'max').",
            registry=registry,
        )
        self.achieved_rate = Gauge(
            name("achieved_rate_events_per_second"),
            "Events acknowledged per second over the last second or so.",
            registry=registry,
        )
        self.behind_schedule = Gauge(
            name("behind_schedule_seconds"),
            "How far generation lags the schedule, in seconds of target rate.",
            registry=registry,
        )
        self.events_in_flight = Gauge(
            name("events_in_flight"), "Events sent but not yet acknowledged.", registry=registry
        )
        self.retries = Counter(
            name("retries"),
            "Retries of Kafka operations after a retriable error, by operation.",
            ["operation"],
            registry=registry,
        )
        for operation in _RETRY_OPERATIONS:
            self.retries.labels(operation=operation)
        self.up = Gauge(name("up"), "1 while the producer is running.", registry=registry)
        self.build_info = Gauge(
            name("build_info"), "Build information; always 1.", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)

    def send_errors(self, kind: str) -> Counter:
        """The ``send_errors_total`` child for ``kind``, bound once and reused."""
        child = self._error_children.get(kind)
        if child is None:
            child = self._send_errors.labels(kind=kind)
            self._error_children[kind] = child
        return child
