"""Specification of the options of ``sensorstream dlq``: durations, times and selections."""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord

from sensorstream.cli._dlq import DeadLetter, Selection, iso, parse_duration, parse_moment
from sensorstream.schema import DeadLetterHeaders, DeadLetterReason

NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def letter(
    *,
    reason: DeadLetterReason = DeadLetterReason.NOT_JSON,
    key: bytes | None = b"sensor-0001",
    value: bytes | None = b"{",
    timestamp: int = NOW_MS,
) -> DeadLetter:
    headers = DeadLetterHeaders(
        reason=reason,
        error="e",
        original_topic="sensor-data",
        original_partition=0,
        original_offset=1,
        original_timestamp=timestamp - 5,
        instance="p-1",
    ).to_kafka_headers()
    record = ConsumerRecord(
        "sensor-data.dlq", 0, 3, timestamp, 0, key, value, None, 0, 0, tuple(headers)
    )
    return DeadLetter.from_record(record)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "ms"),
        [
            ("1h", 3_600_000),
            ("90s", 90_000),
            ("15m", 900_000),
            ("1d", 86_400_000),
            ("1w", 604_800_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("0.5h", 1_800_000),
            ("30", 30_000),
            (" 2H ", 7_200_000),
        ],
    )
    def test_units_and_plain_seconds(self, text: str, ms: int) -> None:
        """A number with ms/s/m/h/d/w (combinable); a plain number is seconds."""
        assert ms == parse_duration(text)

    @pytest.mark.parametrize(
        "text", ["", "1x", "h", "1h 2", "one hour", "1h-30m", "-1h", "inf", "nan", "1e3"]
    )
    def test_refuses_what_is_not_a_duration(self, text: str) -> None:
        """The message quotes the value and says what would be valid."""
        with pytest.raises(ValueError, match=r"is not a duration: use a number and a unit"):
            parse_duration(text)

    @pytest.mark.parametrize("text", ["0", "0h", "0.0001"])
    def test_refuses_zero_and_negative(self, text: str) -> None:
        """A bucket of no time is no bucket."""
        with pytest.raises(ValueError, match="longer than zero"):
            parse_duration(text)


class TestParseMoment:
    @pytest.mark.parametrize(
        ("text", "ms"),
        [
            ("2024-05-01T12:00:00Z", NOW_MS),
            ("2024-05-01T12:00:00", NOW_MS),  # no offset: UTC
            ("2024-05-01T14:00:00+02:00", NOW_MS),
            ("2024-05-01T12:00:00.250Z", NOW_MS + 250),
            ("2024-05-01", NOW_MS - 12 * 3_600_000),
            ("1714564800", NOW_MS),
            ("1714564800.5", NOW_MS + 500),
        ],
    )
    def test_iso_8601_or_unix_seconds(self, text: str, ms: int) -> None:
        """ISO 8601 (UTC unless it says) or Unix seconds, to epoch milliseconds."""
        assert ms == parse_moment(text, now_ms=0)

    def test_a_duration_is_that_long_before_now(self) -> None:
        """``2h`` as a time means two hours ago."""
        assert NOW_MS - 7_200_000 == parse_moment("2h", now_ms=NOW_MS)

    @pytest.mark.parametrize(
        "text", ["yesterday", "2024-13-01", "", "12:00 tomorrow", "inf", "nan", "-1"]
    )
    def test_refuses_what_is_not_a_time(self, text: str) -> None:
        """The message names all three accepted forms."""
        with pytest.raises(ValueError, match=r"ISO 8601 .* Unix seconds .* a duration"):
            parse_moment(text, now_ms=NOW_MS)

    def test_iso_renders_utc_milliseconds(self) -> None:
        """Times are shown as ISO 8601 in UTC with a Z."""
        assert "2024-05-01T12:00:00.250Z" == iso(NOW_MS + 250)


class TestSelection:
    def test_empty_selects_everything(self) -> None:
        """No filter: every letter, a malformed one too."""
        unreadable = DeadLetter.from_record(
            ConsumerRecord("dlq", 0, 0, 0, 0, None, b"x", None, 0, 0, ())
        )
        assert [True, True] == [Selection().matches(x) for x in (letter(), unreadable)]

    def test_reasons(self) -> None:
        """Any of the given reasons; a letter without readable headers matches none."""
        selection = Selection(
            reasons=frozenset({DeadLetterReason.NOT_JSON, DeadLetterReason.EMPTY})
        )
        unreadable = DeadLetter.from_record(
            ConsumerRecord("dlq", 0, 0, 0, 0, None, b"x", None, 0, 0, ())
        )
        assert [True, True, False, False] == [
            selection.matches(letter(reason=DeadLetterReason.NOT_JSON)),
            selection.matches(letter(reason=DeadLetterReason.EMPTY)),
            selection.matches(letter(reason=DeadLetterReason.LATE_EVENT)),
            selection.matches(unreadable),
        ]

    def test_sensor_by_key_or_by_value(self) -> None:
        """The key (the producers key readings by sensor id) or the value's sensor_id;
        a value that is not a JSON object cannot say."""
        selection = Selection(sensor="sensor-0007")
        assert [True, True, False, False] == [
            selection.matches(letter(key=b"sensor-0007")),
            selection.matches(letter(key=None, value=b'{"sensor_id": "sensor-0007", "t": 500}')),
            selection.matches(letter(key=None, value=b'{"sensor_id": "sensor-0007", "t": ')),
            selection.matches(letter(key=b"sensor-0008", value=b"\xff")),
        ]

    def test_time_range_is_half_open_on_the_dead_letter_time(self) -> None:
        """``since`` included, ``until`` excluded, on the letter's own Kafka timestamp."""
        selection = Selection(since_ms=NOW_MS, until_ms=NOW_MS + 1000)
        assert [False, True, True, False] == [
            selection.matches(letter(timestamp=t))
            for t in (NOW_MS - 1, NOW_MS, NOW_MS + 999, NOW_MS + 1000)
        ]

    def test_until_must_be_after_since(self) -> None:
        """An empty range is a mistake, said with both times."""
        with pytest.raises(ValueError, match=r"--until \(2024-05-01T12:00:00.000Z\) must be after"):
            Selection(since_ms=NOW_MS, until_ms=NOW_MS)

    def test_to_json(self) -> None:
        """The selection as a report shows it: reasons sorted, times in ISO 8601."""
        selection = Selection(
            reasons=frozenset({DeadLetterReason.NOT_JSON, DeadLetterReason.EMPTY}),
            since_ms=NOW_MS,
        )
        assert {
            "reasons": ["empty", "not_json"],
            "sensor": None,
            "since": "2024-05-01T12:00:00.000Z",
            "until": None,
        } == selection.to_json()
