"""Ledger: where each input reading ended up, from plain record values."""

from __future__ import annotations

import uuid

from sensorstream.audit import Ledger
from sensorstream.schema import (
    DeadLetterHeaders,
    DeadLetterReason,
    SensorReading,
    WindowAggregate,
    encode_aggregate,
    encode_reading,
)

TOPIC = "in"


def reading(sensor: str, seq: int) -> bytes:
    return encode_reading(
        SensorReading(
            schema_version=1,
            event_id=str(uuid.uuid4()),
            sensor_id=sensor,
            seq=seq,
            event_time=1_700_000_000_000 + seq * 100,
            temperature=20.0,
            humidity=50.0,
        )
    )


def aggregate(sensor: str, first: int, last: int, count: int | None = None, ws: int = 0) -> bytes:
    return encode_aggregate(
        WindowAggregate(
            sensor_id=sensor,
            window_start=ws or 1_700_000_000_000 + first * 100,
            window_end=(ws or 1_700_000_000_000 + first * 100) + 1000,
            count=last - first + 1 if count is None else count,
            temperature_min=20.0,
            temperature_max=20.0,
            temperature_mean=20.0,
            humidity_min=50.0,
            humidity_max=50.0,
            humidity_mean=50.0,
            first_seq=first,
            last_seq=last,
        )
    )


def headers(reason: DeadLetterReason, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return DeadLetterHeaders(
        reason=reason,
        error="x",
        original_topic=TOPIC,
        original_partition=partition,
        original_offset=offset,
        original_timestamp=0,
        instance="test",
    ).to_kafka_headers()


def fed(per_sensor: int = 10, sensors: tuple[str, ...] = ("s-1",)) -> Ledger:
    ledger = Ledger(input_topic=TOPIC)
    offset = 0
    for seq in range(per_sensor):
        for sensor in sensors:
            ledger.add_input(0, offset, reading(sensor, seq))
            offset += 1
    return ledger


class TestAccounting:
    def test_every_reading_in_one_aggregate_is_ok(self) -> None:
        """Two windows covering 0..9 exactly: nothing missing, nothing twice."""
        ledger = fed()
        ledger.add_aggregate(aggregate("s-1", 0, 4))
        ledger.add_aggregate(aggregate("s-1", 5, 9))

        report = ledger.report()

        assert report.ok
        assert (10, 10, 0, 0) == (
            report.totals.produced,
            report.totals.aggregated,
            report.totals.missing,
            report.totals.duplicated,
        )

    def test_a_deleted_aggregate_is_missing_readings(self) -> None:
        """Without the second window, seqs 5..9 are missing and named."""
        ledger = fed()
        ledger.add_aggregate(aggregate("s-1", 0, 4))

        report = ledger.report()

        assert not report.ok
        assert 5 == report.totals.missing
        assert [(5, 9)] == report.sensors[0].missing_seqs

    def test_dead_letters_account_for_their_readings(self) -> None:
        """A reading in the DLQ is not missing, and a window around it may skip it."""
        ledger = fed()
        ledger.add_dead_letter(reading("s-1", 4), headers(DeadLetterReason.LATE_EVENT, 0, 4))
        ledger.add_aggregate(aggregate("s-1", 0, 9, count=9))

        report = ledger.report()

        assert report.ok
        assert {"late_event": 1} == report.totals.dead_letters_by_reason
        assert (9, 1, 0) == (
            report.totals.aggregated,
            report.totals.dead_lettered,
            report.totals.partial_windows,
        )

    def test_a_seq_in_two_different_windows_is_counted_twice(self) -> None:
        """Overlapping windows double-count the shared seqs."""
        ledger = fed()
        ledger.add_aggregate(aggregate("s-1", 0, 5))
        ledger.add_aggregate(aggregate("s-1", 4, 9))

        report = ledger.report()

        assert not report.ok
        assert 2 == report.totals.duplicated

    def test_an_identical_reemission_is_counted_apart(self) -> None:
        """The same window twice, byte for byte, is a re-emission, not a double count."""
        ledger = fed()
        ledger.add_aggregate(aggregate("s-1", 0, 9))
        ledger.add_aggregate(aggregate("s-1", 0, 9))

        report = ledger.report()

        assert report.ok
        assert (1, 0) == (report.totals.reemitted_windows, report.totals.duplicated)

    def test_a_window_reemitted_with_other_contents_conflicts(self) -> None:
        """The same window start with another count is a conflict and a double count."""
        ledger = fed()
        start = 1_700_000_000_000
        ledger.add_aggregate(aggregate("s-1", 0, 9, ws=start))
        ledger.add_aggregate(aggregate("s-1", 0, 4, ws=start))

        report = ledger.report()

        assert not report.ok
        assert (1, 5) == (report.totals.conflicting_windows, report.totals.duplicated)

    def test_a_partial_window_leaves_readings_missing(self) -> None:
        """count below the seq range's readings: the shortfall is missing."""
        ledger = fed()
        ledger.add_aggregate(aggregate("s-1", 0, 9, count=7))

        report = ledger.report()

        assert not report.ok
        assert (1, 3, 7) == (
            report.totals.partial_windows,
            report.totals.missing,
            report.totals.aggregated,
        )

    def test_an_overcounted_window_counts_readings_twice(self) -> None:
        """count above the seq range's readings: the surplus is counted twice."""
        ledger = fed()
        ledger.add_aggregate(aggregate("s-1", 0, 9, count=12))

        report = ledger.report()

        assert (1, 2) == (report.totals.overcounted_windows, report.totals.duplicated)

    def test_aggregates_it_cannot_read_are_counted(self) -> None:
        """An aggregate that does not decode, or has no seq range, is counted apart."""
        ledger = fed()
        ledger.add_aggregate(b"{")
        ledger.add_aggregate(aggregate("s-1", 0, 9))

        assert 1 == ledger.report().totals.unreadable_aggregates


class TestInput:
    def test_gaps_reorderings_and_repeats_in_the_input(self) -> None:
        """The input itself: seq 3 never stored, 6 before 5, 7 twice."""
        ledger = Ledger(input_topic=TOPIC)
        for offset, seq in enumerate([0, 1, 2, 4, 6, 5, 7, 7]):
            ledger.add_input(0, offset, reading("s-1", seq))

        t = ledger.report().totals

        assert (7, 1, 1, 1) == (t.produced, t.input_gaps, t.input_reordered, t.input_duplicates)

    def test_undecodable_input_is_matched_by_position(self) -> None:
        """Poison is accounted for by its dead letter's partition and offset."""
        ledger = Ledger(input_topic=TOPIC)
        ledger.add_input(2, 40, b"not json")
        ledger.add_input(2, 41, b"{}")
        ledger.add_dead_letter(b"not json", headers(DeadLetterReason.NOT_JSON, 2, 40))

        report = ledger.report()

        assert (2, 1, 1) == (
            report.totals.undecodable,
            report.totals.dead_lettered,
            report.totals.missing,
        )
        assert [(2, 41)] == report.undecodable_missing

    def test_dead_letters_of_other_topics_are_ignored(self) -> None:
        """A shared DLQ: only this input topic's dead letters count."""
        ledger = fed()
        other = DeadLetterHeaders(
            reason=DeadLetterReason.NOT_JSON,
            error="x",
            original_topic="elsewhere",
            original_partition=0,
            original_offset=0,
            original_timestamp=0,
            instance="t",
        )
        ledger.add_dead_letter(reading("s-1", 0), other.to_kafka_headers())

        assert 0 == ledger.report().totals.dead_lettered


class TestFollow:
    def test_readings_in_flight_are_not_missing_until_settled(self) -> None:
        """Unaggregated readings count as missing only two settle() calls later."""
        ledger = fed()

        assert 0 == ledger.report(in_flight=True).totals.missing
        ledger.settle()
        assert 0 == ledger.report(in_flight=True).totals.missing
        ledger.settle()
        assert 10 == ledger.report(in_flight=True).totals.missing
