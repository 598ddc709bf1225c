"""Specification of a batch: records to rows, one per identity, offsets to commit."""

from __future__ import annotations

import uuid

import pytest

from sensorstream.schema import (
    Alert,
    PoisonEventError,
    WindowAggregate,
    encode_aggregate,
    encode_alert,
)
from sensorstream.sink._batch import (
    AGGREGATE_COLUMNS,
    ALERT_COLUMNS,
    Batch,
    aggregate_row,
    alert_row,
)

T0 = 1_700_000_000_000


def aggregate(sensor: str = "sensor-0001", start: int = T0, **changes: object) -> WindowAggregate:
    fields: dict[str, object] = {
        "sensor_id": sensor,
        "window_start": start,
        "window_end": start + 10_000,
        "count": 3,
        "temperature_min": 20.0,
        "temperature_max": 22.5,
        "temperature_mean": 21.0,
        "humidity_min": 40.0,
        "humidity_max": 45.0,
        "humidity_mean": 42.0,
        "first_seq": 10,
        "last_seq": 12,
        **changes,
    }
    return WindowAggregate(**fields)  # type: ignore[arg-type]


def alert(event_id: str | None = None, kind: str = "temperature_high") -> Alert:
    return Alert(
        sensor_id="sensor-0001",
        kind=kind,  # type: ignore[arg-type]
        value=47.5,
        threshold=45.0,
        event_time=1_700_000_000_123,
        event_id=event_id or str(uuid.uuid4()),
    )


class TestRowMapping:
    def test_aggregate_row_follows_the_staging_columns(self) -> None:
        """Each value lands under its column name; the Kafka position comes last."""
        agg = aggregate()
        key, row = aggregate_row(encode_aggregate(agg), 4, 99)
        by_column = dict(zip(AGGREGATE_COLUMNS, row, strict=True))
        expected = {
            "sensor_id": agg.sensor_id,
            "window_start_ms": agg.window_start,
            "window_end_ms": agg.window_end,
            "count": agg.count,
            "temperature_min": agg.temperature_min,
            "temperature_max": agg.temperature_max,
            "temperature_mean": agg.temperature_mean,
            "humidity_min": agg.humidity_min,
            "humidity_max": agg.humidity_max,
            "humidity_mean": agg.humidity_mean,
            "first_seq": agg.first_seq,
            "last_seq": agg.last_seq,
            "kafka_partition": 4,
            "kafka_offset": 99,
        }
        assert ((agg.sensor_id, agg.window_start), expected) == (key, by_column)

    def test_alert_row_follows_the_staging_columns(self) -> None:
        """An alert's identity is its reading and its kind."""
        a = alert()
        key, row = alert_row(encode_alert(a), 1, 7)
        by_column = dict(zip(ALERT_COLUMNS, row, strict=True))
        expected = {
            "event_id": a.event_id,
            "kind": a.kind,
            "sensor_id": a.sensor_id,
            "event_time_ms": a.event_time,
            "value": a.value,
            "threshold": a.threshold,
            "kafka_partition": 1,
            "kafka_offset": 7,
        }
        assert ((a.event_id, a.kind), expected) == (key, by_column)

    def test_garbage_is_poison(self) -> None:
        """A value that is no aggregate raises PoisonEventError (the batch counts it)."""
        with pytest.raises(PoisonEventError):
            aggregate_row(b'{"sensor_id": 1}', 0, 0)


class TestBatch:
    def test_offsets_are_the_next_to_consume(self) -> None:
        """Per topic role and partition, the offset after the last record added."""
        batch = Batch()
        batch.add("aggregates", 0, 5, encode_aggregate(aggregate(start=T0)))
        batch.add("aggregates", 0, 6, encode_aggregate(aggregate(start=T0 + 10_000)))
        batch.add("alerts", 0, 41, encode_alert(alert()))
        assert {("aggregates", 0): 7, ("alerts", 0): 42} == batch.offsets
        assert (3, 2, 1) == (len(batch), len(batch.rows("aggregates")), len(batch.rows("alerts")))

    def test_identical_repeat_is_one_row(self) -> None:
        """An at-least-once re-emission in the same batch is one row, counted as identical."""
        batch = Batch()
        value = encode_aggregate(aggregate())
        batch.add("aggregates", 2, 10, value)
        batch.add("aggregates", 2, 11, value)
        rows = batch.rows("aggregates")
        assert (1, 11, {("aggregates", "identical"): 1}) == (
            len(rows),
            rows[0][-1],
            dict(batch.repeats),
        )

    def test_changed_repeat_keeps_the_latest(self) -> None:
        """Other contents for the same window: the later record wins and is counted as changed."""
        batch = Batch()
        batch.add("aggregates", 2, 10, encode_aggregate(aggregate(count=2, last_seq=11)))
        batch.add("aggregates", 2, 11, encode_aggregate(aggregate(count=3)))
        rows = batch.rows("aggregates")
        counts = [row[AGGREGATE_COLUMNS.index("count")] for row in rows]
        assert ([3], {("aggregates", "changed"): 1}) == (counts, dict(batch.repeats))

    def test_two_kinds_of_one_reading_are_two_alerts(self) -> None:
        """A reading crossing two thresholds raises two alerts, both kept."""
        batch = Batch()
        event_id = str(uuid.uuid4())
        batch.add("alerts", 0, 0, encode_alert(alert(event_id, "temperature_high")))
        batch.add("alerts", 0, 1, encode_alert(alert(event_id, "humidity_high")))
        assert (2, {}) == (len(batch.rows("alerts")), dict(batch.repeats))

    def test_poison_is_skipped_and_counted_but_its_offset_moves(self) -> None:
        """Undecodable records are not written, counted by reason, and committed past."""
        batch = Batch()
        batch.add("aggregates", 3, 0, b"not json")
        batch.add("alerts", 3, 0, None)
        expected = ({("aggregates", "not_json"): 1, ("alerts", "empty"): 1}, [], 2)
        assert expected == (dict(batch.skipped), batch.rows("aggregates"), len(batch))
        assert {("aggregates", 3): 1, ("alerts", 3): 1} == batch.offsets

    def test_discard_forgets_revoked_partitions(self) -> None:
        """Revoked partitions lose their rows and offsets; the others keep theirs."""
        batch = Batch()
        batch.add("aggregates", 0, 0, encode_aggregate(aggregate("sensor-0001")))
        batch.add("aggregates", 1, 0, encode_aggregate(aggregate("sensor-0002")))
        batch.add("alerts", 1, 0, encode_alert(alert()))
        batch.discard("aggregates", {1})
        sensors = [row[0] for row in batch.rows("aggregates")]
        assert (["sensor-0001"], {("aggregates", 0): 1, ("alerts", 1): 1}) == (
            sensors,
            batch.offsets,
        )

    def test_empty_batch_is_false(self) -> None:
        """A batch without records is falsy (nothing to write)."""
        assert not Batch()
