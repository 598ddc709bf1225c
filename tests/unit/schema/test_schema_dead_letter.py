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
    def test_contains_every_reject_reason_plus_three(self) -> None:
        """All decoder reasons, plus handler_failed, late_event and future_event_time."""
        assert {*RejectReason, "handler_failed", "late_event", "future_event_time"} == set(
            DeadLetterReason
        )

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

    def test_bad_reason_is_named_with_the_valid_ones(self) -> None:
        """An unknown reason header is quoted, and the valid reasons are listed."""
        broken = [
            (k, b"cosmic_ray" if k.endswith("reason") else v) for k, v in HEADERS.to_kafka_headers()
        ]

        with pytest.raises(ValueError, match=r"'cosmic_ray' is not one of .*future_event_time"):
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


LATE = dataclasses.replace(HEADERS, reason=DeadLetterReason.LATE_EVENT, lateness_ms=90_000)
CUT = dataclasses.replace(
    HEADERS,
    reason=DeadLetterReason.TOO_LARGE,
    original_size=5_000_000,
    sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
)


class TestOptionalDeadLetterHeaders:
    def test_absent_by_default(self) -> None:
        """lateness_ms, original_size and sha256 are None unless given."""
        assert (None, None, None) == (HEADERS.lateness_ms, HEADERS.original_size, HEADERS.sha256)

    def test_rendered_only_when_set(self) -> None:
        """A late event adds only sensorstream.dlq.lateness_ms, after the seven fixed ones."""
        fixed = dataclasses.replace(LATE, lateness_ms=None).to_kafka_headers()

        assert [*fixed, ("sensorstream.dlq.lateness_ms", b"90000")] == LATE.to_kafka_headers()

    def test_a_cut_value_names_its_size_and_digest(self) -> None:
        """A value cut to fit the DLQ adds original_size and sha256, as text."""
        assert (
            [
                ("sensorstream.dlq.original_size", b"5000000"),
                ("sensorstream.dlq.sha256", CUT.sha256.encode()),  # type: ignore[union-attr]
            ]
            == CUT.to_kafka_headers()[7:]
        )

    @pytest.mark.parametrize(
        "headers",
        [
            LATE,
            CUT,
            dataclasses.replace(CUT, lateness_ms=0, original_size=0),
        ],
        ids=["lateness", "cut-value", "zeros"],
    )
    def test_round_trip(self, headers: DeadLetterHeaders) -> None:
        """from_kafka_headers(to_kafka_headers(h)) == h with any optional header set (0 too)."""
        assert headers == DeadLetterHeaders.from_kafka_headers(headers.to_kafka_headers())

    def test_missing_optional_headers_parse_as_none(self) -> None:
        """A record dead-lettered before these headers existed still reads back."""
        parsed = DeadLetterHeaders.from_kafka_headers(HEADERS.to_kafka_headers())

        assert (None, None, None) == (parsed.lateness_ms, parsed.original_size, parsed.sha256)

    @given(
        lateness_ms=st.none() | st.integers(0, 2**63 - 1),
        original_size=st.none() | st.integers(0, 2**31 - 1),
        sha256=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    )
    def test_round_trips_any_combination(
        self, lateness_ms: int | None, original_size: int | None, sha256: str | None
    ) -> None:
        """Every combination of set and unset optional headers survives."""
        headers = dataclasses.replace(
            HEADERS, lateness_ms=lateness_ms, original_size=original_size, sha256=sha256
        )

        assert headers == DeadLetterHeaders.from_kafka_headers(headers.to_kafka_headers())

    @pytest.mark.parametrize("key", ["lateness_ms", "original_size"])
    def test_bad_optional_number_is_named(self, key: str) -> None:
        """A non-integer lateness_ms or original_size header is named with its value."""
        broken = [*HEADERS.to_kafka_headers(), (f"sensorstream.dlq.{key}", b"soon")]

        with pytest.raises(ValueError, match=rf"sensorstream\.dlq\.{key} must be an integer"):
            DeadLetterHeaders.from_kafka_headers(broken)
