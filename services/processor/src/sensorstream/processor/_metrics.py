"""The processor's Prometheus metrics, all named ``sensorstream_processor_<what>_<unit>``.

Dashboards and alert rules are written against these names: do not rename them.
Labels are bounded sets only (partition, outcome, reason, kind). Per-partition
label children are bound once per assignment (:meth:`ProcessorMetrics.bind_partition`)
and removed on revocation, so the hot path never looks a label up.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from sensorstream.schema import DeadLetterReason

__all__ = ["OUTCOMES", "PartitionMetrics", "ProcessorMetrics"]

OUTCOMES = ("ok", "invalid", "late", "dropped", "retried", "dead_lettered", "replayed")
ALERT_KINDS = ("temperature_high", "temperature_low", "humidity_high", "humidity_low")

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_HANDLER_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
_REBALANCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(slots=True)
class PartitionMetrics:
    """Label children of one assigned partition, bound once."""

    consumed: Counter
    lag_events: Gauge
    lag_seconds: Gauge
    buffer_depth: Gauge


class ProcessorMetrics:
    """Every processor metric, registered in ``registry`` (the default one in the service)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, version: str = "0") -> None:
        p = "sensorstream_processor_"
        self.build_info = Gauge(
            p + "build_info", "Build of the running processor (always 1).", ["version"],
            registry=registry,
        )  # fmt: skip
        self.build_info.labels(version=version).set(1)
        self.up = Gauge(p + "up", "1 while the processor is running.", registry=registry)
        self.events_consumed = Counter(
            p + "events_consumed_total", "Records fetched from the input topic.", ["partition"],
            registry=registry,
        )  # fmt: skip
        events = Counter(
            p + "events_total", "Consumed events by outcome.", ["outcome"], registry=registry
        )
        self.ok = events.labels(outcome="ok")
        self.invalid = events.labels(outcome="invalid")
        self.late = events.labels(outcome="late")
        self.dropped = events.labels(outcome="dropped")
        self.retried = events.labels(outcome="retried")
        self.dead_lettered = events.labels(outcome="dead_lettered")
        self.replayed = events.labels(outcome="replayed")
        dead_letters = Counter(
            p + "dead_letters_total", "Events sent to the dead-letter topic, by reason.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.dead_letters = {r.value: dead_letters.labels(reason=r.value) for r in DeadLetterReason}
        self.dead_letters_truncated = Counter(
            p + "dead_letters_truncated_total",
            "Dead letters whose value was cut to fit the dead-letter topic's size limit.",
            registry=registry,
        )
        self.retries = Counter(
            p + "retries_total",
            "Retries of Kafka operations after a retriable error, by operation.",
            ["operation"], registry=registry,
        )  # fmt: skip
        self.processing_latency = Histogram(
            p + "processing_latency_seconds",
            "Event time to done (outputs acked); sampled per batch: oldest and newest event.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.handler_duration = Histogram(
            p + "handler_duration_seconds", "Time of one user handler call.",
            buckets=_HANDLER_BUCKETS, registry=registry,
        )  # fmt: skip
        self.lag_events = Gauge(
            p + "consumer_lag_events", "Events in the partition not yet processed.", ["partition"],
            registry=registry,
        )  # fmt: skip
        self.lag_seconds = Gauge(
            p + "consumer_lag_seconds",
            "Age of the last processed event while the partition has lag, else 0.", ["partition"],
            registry=registry,
        )  # fmt: skip
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Partitions assigned to this member.", registry=registry
        )
        self.rebalances = Counter(
            p + "rebalances_total", "Group rebalances this member took part in.", registry=registry
        )
        self.rebalance_duration = Histogram(
            p + "rebalance_duration_seconds", "Revocation to assignment.",
            buckets=_REBALANCE_BUCKETS, registry=registry,
        )  # fmt: skip
        commits = Counter(
            p + "commits_total", "Offset commits (or transactions) by outcome.", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.commits_ok = commits.labels(outcome="ok")
        self.commits_failed = commits.labels(outcome="failed")
        self.commit_latency = Histogram(
            p + "commit_latency_seconds", "Duration of one offset commit (or transaction commit).",
            buckets=_COMMIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.open_windows = Gauge(
            p + "open_windows", "Windows open across assigned partitions.", registry=registry
        )
        self.aggregates_emitted = Counter(
            p + "aggregates_emitted_total", "Window aggregates produced.", registry=registry
        )
        alerts = Counter(
            p + "alerts_emitted_total", "Alerts produced, by kind.", ["kind"], registry=registry
        )
        self.alerts = {kind: alerts.labels(kind=kind) for kind in ALERT_KINDS}
        self.buffer_depth = Gauge(
            p + "buffer_depth_events", "Fetched events waiting for the partition's worker.",
            ["partition"], registry=registry,
        )  # fmt: skip
        self.paused_partitions = Gauge(
            p + "paused_partitions", "Partitions whose fetching is paused (buffer full).",
            registry=registry,
        )  # fmt: skip

    def outcome_totals(self) -> dict[str, int]:
        """Events by outcome so far (for the summary log line), read through ``collect``."""
        totals: dict[str, int] = {}
        for outcome, counter in (
            ("ok", self.ok),
            ("invalid", self.invalid),
            ("late", self.late),
            ("dropped", self.dropped),
            ("replayed", self.replayed),
            ("dead_lettered", self.dead_lettered),
            ("retried", self.retried),
        ):
            totals[outcome] = int(
                sum(
                    sample.value
                    for metric in counter.collect()
                    for sample in metric.samples
                    if sample.name.endswith("_total")
                )
            )
        return totals

    def bind_partition(self, partition: int) -> PartitionMetrics:
        """Label children for a newly assigned partition."""
        label = str(partition)
        return PartitionMetrics(
            consumed=self.events_consumed.labels(partition=label),
            lag_events=self.lag_events.labels(partition=label),
            lag_seconds=self.lag_seconds.labels(partition=label),
            buffer_depth=self.buffer_depth.labels(partition=label),
        )

    def unbind_partition(self, partition: int) -> None:
        """Drop a revoked partition's gauges (its counter stays: counters never go back)."""
        label = str(partition)
        for gauge in (self.lag_events, self.lag_seconds, self.buffer_depth):
            with contextlib.suppress(KeyError):
                gauge.remove(label)
