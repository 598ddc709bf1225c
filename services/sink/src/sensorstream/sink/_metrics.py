"""The sink's Prometheus metrics, all named ``sensorstream_sink_<what>_<unit>``.

Dashboards and alert rules are written against these names: do not rename them.
Labels are bounded sets only: ``table`` and ``topic`` are the roles (aggregates,
alerts), never a topic's configured name; ``partition``, ``outcome``, ``reason``,
``kind``, ``operation`` are fixed in code. Label children are bound once, here or per
assignment, so a batch never looks a label up.
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from sensorstream.schema import RejectReason

from ._batch import Role

__all__ = ["DATABASE_ERROR_KINDS", "ROLES", "SinkMetrics"]

ROLES: Final[tuple[Role, ...]] = ("aggregates", "alerts")
DATABASE_ERROR_KINDS: Final = ("connection", "timeout", "conflict", "other")
"""connection: unreachable, refused, lost, shutting down; timeout: a call outlasted
--database-timeout; conflict: serialization failure or deadlock; other: anything else."""

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_ROWS_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10_000, 50_000)


class SinkMetrics:
    """Every sink metric, registered in ``registry`` (the default one in the service)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, version: str = "0") -> None:
        p = "sensorstream_sink_"
        self.build_info = Gauge(
            p + "build_info", "Build of the running sink (always 1).", ["version"],
            registry=registry,
        )  # fmt: skip
        self.build_info.labels(version=version).set(1)
        self.up = Gauge(p + "up", "1 while the sink is running.", registry=registry)
        self.database_up = Gauge(
            p + "database_up",
            "1 while the sink holds a working database connection.",
            registry=registry,
        )
        self.schema_version = Gauge(
            p + "schema_version",
            "Migration version of the database schema, by layout (plain or timescaledb).",
            ["layout"],
            registry=registry,
        )
        consumed = Counter(
            p + "records_consumed_total", "Records consumed, by topic (role).", ["topic"],
            registry=registry,
        )  # fmt: skip
        self.consumed = {role: consumed.labels(topic=role) for role in ROLES}
        skipped = Counter(
            p + "records_skipped_total",
            "Records that did not decode and were not written, by topic (role) and reason.",
            ["topic", "reason"], registry=registry,
        )  # fmt: skip
        self.skipped = {
            (role, reason.value): skipped.labels(topic=role, reason=reason.value)
            for role in ROLES
            for reason in RejectReason
        }
        rows = Counter(
            p + "rows_written_total",
            "Rows inserted or changed in the database, by table.",
            ["table"], registry=registry,
        )  # fmt: skip
        self.rows_written = {role: rows.labels(table=role) for role in ROLES}
        conflicts = Counter(
            p + "upsert_conflicts_total",
            "Rows whose identity was in the table (or the batch) already, by table and "
            "outcome: identical (a replay, nothing written) or changed (other contents, the "
            "latest kept; the processor should never cause one).",
            ["table", "outcome"], registry=registry,
        )  # fmt: skip
        self.conflicts = {
            (role, outcome): conflicts.labels(table=role, outcome=outcome)
            for role in ROLES
            for outcome in ("identical", "changed")
        }
        batches = Counter(
            p + "batches_total",
            "Batches by outcome: committed (in the database), aborted (given up at shutdown).",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.batches_committed = batches.labels(outcome="committed")
        self.batches_aborted = batches.labels(outcome="aborted")
        self.batch_duration = Histogram(
            p + "batch_duration_seconds",
            "One batch's database transaction (COPY, upserts, commit), the successful attempt.",
            buckets=_BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            p + "batch_rows", "Rows per written batch (both tables).",
            buckets=_ROWS_BUCKETS, registry=registry,
        )  # fmt: skip
        database_errors = Counter(
            p + "database_errors_total",
            "Failed database calls, by kind (each is retried).",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.database_errors = {k: database_errors.labels(kind=k) for k in DATABASE_ERROR_KINDS}
        self.retries = Counter(
            p + "retries_total",
            "Retries after a retriable error, by operation (database, commit, connect, ...).",
            ["operation"], registry=registry,
        )  # fmt: skip
        commits = Counter(
            p + "offset_commits_total",
            "Kafka offset commits (after the database commit) by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.commits_ok = commits.labels(outcome="ok")
        self.commits_failed = commits.labels(outcome="failed")
        self.commit_latency = Histogram(
            p + "offset_commit_latency_seconds", "Duration of one Kafka offset commit.",
            buckets=_COMMIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.lag = Gauge(
            p + "consumer_lag_records",
            "Records of the partition not yet committed to the database.",
            ["topic", "partition"], registry=registry,
        )  # fmt: skip
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Partitions assigned to this member (both topics).",
            registry=registry,
        )  # fmt: skip
        self.rebalances = Counter(
            p + "rebalances_total", "Group rebalances this member took part in.", registry=registry
        )

    def drop_lag(self, role: Role, partition: int) -> None:
        """Forget a revoked partition's lag gauge."""
        with contextlib.suppress(KeyError):
            self.lag.remove(role, str(partition))
