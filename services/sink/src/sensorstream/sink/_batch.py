"""One batch of consumed records, as rows for the database: decoding, mapping, dedup.

Pure and synchronous: :class:`Batch` is fed Kafka records (``add``) in the order they
were consumed and hands out the rows to ``COPY`` and the offsets to commit. It never
talks to Kafka or PostgreSQL, so it is unit-tested with plain values.

Rows are plain tuples in the staging tables' column order (:data:`AGGREGATE_COLUMNS`,
:data:`ALERT_COLUMNS`): asyncpg's binary ``COPY`` takes them as they are. Times stay
epoch milliseconds (integers) here; the database turns them into ``timestamptz``.

A batch holds each identity once (a window: sensor and window start; an alert: event
id and kind), the latest record winning: within a partition records arrive in offset
order, and a sensor's records all share one partition (key = sensor id). A repeat
inside the batch is counted as ``identical`` (an at-least-once re-emission) or
``changed`` (different contents, which the processor should never emit).
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal

from sensorstream.schema import PoisonEventError, decode_aggregate, decode_alert

__all__ = [
    "AGGREGATE_COLUMNS",
    "ALERT_COLUMNS",
    "Batch",
    "Role",
    "aggregate_row",
    "alert_row",
]

Role = Literal["aggregates", "alerts"]

AGGREGATE_COLUMNS: Final = (
    "sensor_id",
    "window_start_ms",
    "window_end_ms",
    "count",
    "temperature_min",
    "temperature_max",
    "temperature_mean",
    "humidity_min",
    "humidity_max",
    "humidity_mean",
    "first_seq",
    "last_seq",
    "kafka_partition",
    "kafka_offset",
)
ALERT_COLUMNS: Final = (
    "event_id",
    "kind",
    "sensor_id",
    "event_time_ms",
    "value",
    "threshold",
    "kafka_partition",
    "kafka_offset",
)
# The trailing columns that say where a row came from, not what it says.
_POSITION_COLUMNS: Final = 2

Row = tuple[object, ...]


def aggregate_row(value: bytes | None, partition: int, offset: int) -> tuple[tuple[str, int], Row]:
    """The identity and the staging row of one aggregate record.

    Raises ``PoisonEventError`` if the value is not a valid aggregate.
    """
    a = decode_aggregate(value if value is not None else b"")
    row = (
        a.sensor_id,
        a.window_start,
        a.window_end,
        a.count,
        a.temperature_min,
        a.temperature_max,
        a.temperature_mean,
        a.humidity_min,
        a.humidity_max,
        a.humidity_mean,
        a.first_seq,
        a.last_seq,
        partition,
        offset,
    )
    return (a.sensor_id, a.window_start), row


def alert_row(value: bytes | None, partition: int, offset: int) -> tuple[tuple[str, str], Row]:
    """The identity and the staging row of one alert record.

    Raises ``PoisonEventError`` if the value is not a valid alert.
    """
    a = decode_alert(value if value is not None else b"")
    row = (a.event_id, a.kind, a.sensor_id, a.event_time, a.value, a.threshold, partition, offset)
    return (a.event_id, a.kind), row


class Batch:
    """Records consumed since the last write, as deduplicated rows and offsets."""

    __slots__ = ("_rows", "offsets", "records", "repeats", "skipped")

    def __init__(self) -> None:
        self._rows: dict[Role, dict[tuple[str, object], Row]] = {"aggregates": {}, "alerts": {}}
        self.offsets: dict[tuple[Role, int], int] = {}
        """(role, partition) -> the offset after the last record added (what to commit)."""
        self.records = 0
        """Records added, skipped ones included (what ``--batch-size`` counts)."""
        self.skipped: Counter[tuple[Role, str]] = Counter()
        """(role, reject reason) -> records that did not decode (they are not written)."""
        self.repeats: Counter[tuple[Role, str]] = Counter()
        """(role, "identical" | "changed") -> identities seen again within the batch."""

    def __len__(self) -> int:
        return self.records

    def __bool__(self) -> bool:
        return self.records > 0

    def rows(self, role: Role) -> list[Row]:
        """The rows to write for ``role``, one per identity."""
        return list(self._rows[role].values())

    def add(self, role: Role, partition: int, offset: int, value: bytes | None) -> None:
        """One consumed record of the ``role`` topic, in offset order within its partition."""
        # Per record: one decode, one dict store; no logging, no exceptions on the good path.
        self.records += 1
        self.offsets[role, partition] = offset + 1
        key: tuple[str, object]
        row: Row
        try:
            if role == "aggregates":
                key, row = aggregate_row(value, partition, offset)
            else:
                key, row = alert_row(value, partition, offset)
        except PoisonEventError as exc:
            self.skipped[role, exc.reason.value] += 1
            return
        rows = self._rows[role]
        before = rows.get(key)
        if before is not None:
            same = before[:-_POSITION_COLUMNS] == row[:-_POSITION_COLUMNS]
            self.repeats[role, "identical" if same else "changed"] += 1
        rows[key] = row

    def discard(self, role: Role, partitions: set[int]) -> None:
        """Forget what came from ``partitions`` of ``role`` (revoked: the new owner
        consumes them again from the last commit)."""
        rows = self._rows[role]
        for key in [k for k, row in rows.items() if row[-_POSITION_COLUMNS] in partitions]:
            del rows[key]
        for where in [w for w in self.offsets if w[0] == role and w[1] in partitions]:
            del self.offsets[where]
