"""``--follow``'s Prometheus metrics, all named ``sensorstream_audit_<what>``.

The same figures as the report, as gauges (a figure may fall back: a reading "missing"
now may arrive later). Labels are bounded sets only: no sensor id ever.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from sensorstream.schema import DeadLetterReason

from ._ledger import AuditReport
from ._reading import PassStats

__all__ = ["READING_STATES", "WINDOW_KINDS", "AuditMetrics"]

READING_STATES = ("produced", "aggregated", "dead_lettered", "missing", "duplicated")
WINDOW_KINDS = ("partial", "overcounted", "reemitted", "conflicting")
INPUT_ANOMALIES = ("gap", "reordered", "duplicate", "undecodable", "unsequenced")


class AuditMetrics:
    """Every audit metric, registered in ``registry`` (the default one in the service)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        p = "sensorstream_audit_"
        self.up = Gauge(p + "up", "1 while the audit is running.", registry=registry)
        readings = Gauge(
            p + "readings",
            "Readings of the input topic by where the audit found them.",
            ["state"],
            registry=registry,
        )
        self.readings = {s: readings.labels(state=s) for s in READING_STATES}
        windows = Gauge(
            p + "windows",
            "Aggregates that do not add up, or came twice, by kind.",
            ["kind"],
            registry=registry,
        )
        self.windows = {k: windows.labels(kind=k) for k in WINDOW_KINDS}
        anomalies = Gauge(
            p + "input_anomalies",
            "Input readings out of line: seq gaps, reorderings, repeats, poison, no seq.",
            ["kind"],
            registry=registry,
        )
        self.anomalies = {k: anomalies.labels(kind=k) for k in INPUT_ANOMALIES}
        dead_letters = Gauge(
            p + "dead_letters",
            "Readings found in the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = {r.value: dead_letters.labels(reason=r.value) for r in DeadLetterReason}
        self.sensors = Gauge(p + "sensors", "Sensors seen in the input topic.", registry=registry)
        self.sensors_with_problems = Gauge(
            p + "sensors_with_problems",
            "Sensors with a reading missing or counted twice, a partial window or a gap.",
            registry=registry,
        )
        self.last_pass = Gauge(
            p + "last_pass_timestamp_seconds",
            "When the last pass over the topics finished (Unix time).",
            registry=registry,
        )
        self.pass_seconds = Gauge(
            p + "pass_duration_seconds",
            "How long the last pass over the topics took.",
            registry=registry,
        )
        self.pass_records = Gauge(
            p + "pass_records", "Records the last pass read.", registry=registry
        )

    def update(self, report: AuditReport, stats: PassStats, *, now: float) -> None:
        t = report.totals
        for state in READING_STATES:
            self.readings[state].set(getattr(t, state))
        self.windows["partial"].set(t.partial_windows)
        self.windows["overcounted"].set(t.overcounted_windows)
        self.windows["reemitted"].set(t.reemitted_windows)
        self.windows["conflicting"].set(t.conflicting_windows)
        self.anomalies["gap"].set(t.input_gaps)
        self.anomalies["reordered"].set(t.input_reordered)
        self.anomalies["duplicate"].set(t.input_duplicates)
        self.anomalies["undecodable"].set(t.undecodable)
        self.anomalies["unsequenced"].set(t.unsequenced)
        for reason, gauge in self.dead_letters.items():
            gauge.set(t.dead_letters_by_reason.get(reason, 0))
        self.sensors.set(t.sensors)
        self.sensors_with_problems.set(report.sensors_with_problems)
        self.last_pass.set(now)
        self.pass_seconds.set(stats.seconds)
        self.pass_records.set(stats.records)
