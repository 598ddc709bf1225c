"""Dead-letter headers say why and from where, and survive a trip through Kafka."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstream.schema import (
    DeadLetterHeaders,
    DeadLetterReason,
    PoisonEventError,
    Rejection,
    RejectReason,
)

HEADERS = DeadLetterHeaders(
    reason=DeadLetterReason.OUT_OF_RANGE,
    error="temperature: 500.0 is out of range -100.0..200.0",
    original_topic="sensor-data",
    original_partition=3,
    original_offset=1234,
    original_timestamp=1_700_000_000_123,
    instance="processor-0",
)


class TestDeadLetterReason:
    def test_contains_every_reject_reason_plus_two(self) -> None:
        """All decoder reasons, plus handler_failed and late_event."""
        assert {*RejectReason, "handler_failed", "late_event"} == set(DeadLetterReason)

    @pytest.mark.parametrize("reason", list(RejectReason))
    def test_converts_from_a_reject_reason(self, reason: RejectReason) -> None:
        """DeadLetterReason(reject_reason) gives the member with the same value."""
        assert reason.value == DeadLetterReason(reason).value


class TestDeadLetterHeaders:
    def test_renders_the_documented_header_names(self) -> None:
        """Seven headers, all under the sensorstream.dlq. prefix, values as UTF-8 text."""
        assert [
            ("sensorstream.dlq.reason", b"out_of_range"),
            ("sensorstream.dlq.error", b"temperature: 500.0 is out of range -100.0..200.0"),
            ("sensorstream.dlq.topic", b"sensor-data"),
            ("sensorstream.dlq.partition", b"3"),
            ("sensorstream.dlq.offset", b"1234"),
            ("sensorstream.dlq.timestamp", b"1700000000123"),
            ("sensorstream.dlq.instance", b"processor-0"),
        ] == HEADERS.to_kafka_headers()

    def test_round_trips(self) -> None:
        """from_kafka_headers(to_kafka_headers(h)) == h."""
        assert HEADERS == DeadLetterHeaders.from_kafka_headers(HEADERS.to_kafka_headers())

    @given(
        reason=st.sampled_from(DeadLetterReason),
        error=st.text(max_size=200),  # at most 800 UTF-8 bytes: below the cut
        partition=st.integers(0, 2**31 - 1),
        offset=st.integers(0, 2**63 - 1),
    )
    def test_round_trips_any_values(
        self, reason: DeadLetterReason, error: str, partition: int, offset: int
    ) -> None:
        """Every reason and partition/offset, and short errors in any script, survive."""
        headers = DeadLetterHeaders(
            reason=reason,
            error=error,
            original_topic="sensor-data",
            original_partition=partition,
            original_offset=offset,
            original_timestamp=0,
            instance="processor-0",
        )

        assert headers == DeadLetterHeaders.from_kafka_headers(headers.to_kafka_headers())

    def test_ignores_the_original_events_headers(self) -> None:
        """Unrelated headers kept alongside do not disturb the reading."""
        mixed = [("traceparent", b"00-abc-def-01"), *HEADERS.to_kafka_headers(), ("x", b"\xff")]

        assert HEADERS == DeadLetterHeaders.from_kafka_headers(mixed)

    def test_truncates_the_error_to_1000_bytes_without_splitting_characters(self) -> None:
        """A long non-ASCII error is cut at a character boundary, within 1000 bytes."""
        headers = dataclasses.replace(HEADERS, error="é" * 1000)

        error = dict(headers.to_kafka_headers())["sensorstream.dlq.error"]

        assert ("é" * 500, 1000) == (error.decode("utf-8"), len(error))

    def test_missing_header_is_named(self) -> None:
        """A DLQ record without our headers gives a ValueError naming the header."""
        with pytest.raises(ValueError, match=r"sensorstream\.dlq\.reason is missing"):
            DeadLetterHeaders.from_kafka_headers([("traceparent", b"x")])

    def test_bad_number_is_named(self) -> None:
        """A non-integer offset header is named with its value."""
        broken = [(k, b"12x" if k.endswith("offset") else v) for k, v in HEADERS.to_kafka_headers()]

        with pytest.raises(ValueError, match=r"sensorstream\.dlq\.offset must be an integer"):
            DeadLetterHeaders.from_kafka_headers(broken)

    def test_builds_from_a_rejection_or_poison_error(self) -> None:
        """for_rejection copies reason and message from either form."""
        rejection = Rejection(RejectReason.OUT_OF_RANGE, HEADERS.error)
        origin = {
            "original_topic": HEADERS.original_topic,
            "original_partition": HEADERS.original_partition,
            "original_offset": HEADERS.original_offset,
            "original_timestamp": HEADERS.original_timestamp,
            "instance": HEADERS.instance,
        }

        assert [HEADERS, HEADERS] == [
            DeadLetterHeaders.for_rejection(rejection, **origin),  # type: ignore[arg-type]
            DeadLetterHeaders.for_rejection(PoisonEventError(rejection), **origin),  # type: ignore[arg-type]
        ]
