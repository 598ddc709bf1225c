"""Specification of how ``sensorstream dlq`` reads a dead letter and what it replays.

The letters here are written by the processor's own ``DeadLetterWriter``, so these tests
also keep the writer and this reader in agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from aiokafka import ConsumerRecord

from sensorstream.cli._dlq import (
    DeadLetter,
    DeadLetterCounts,
    ReplayReport,
    Selection,
    render_bytes,
    replay_count,
)
from sensorstream.processor._dead_letters import DeadLetterWriter, OutputRecord
from sensorstream.schema import DeadLetterHeaders, DeadLetterReason

REPLAYS = DeadLetterHeaders.REPLAYS
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@dataclass
class Original:
    """The record the processor consumed and refused."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def dead_letter(
    value: bytes | None = b"{",
    *,
    headers: Sequence[tuple[str, bytes]] = (("traceparent", b"00-ab-cd-01"),),
    reason: DeadLetterReason = DeadLetterReason.NOT_JSON,
    max_bytes: int = 20_000,
    dlq_offset: int = 40,
    dlq_timestamp: int = T0,
) -> DeadLetter:
    """What the CLI reads for ``value`` once the processor dead-lettered it."""
    writer = DeadLetterWriter(topic="sensor-data.dlq", instance="processor-1", max_bytes=max_bytes)
    refused = Original("sensor-data", 4, 17, T0 - 60_000, b"sensor-0003", value, list(headers))
    written: OutputRecord = writer.letter(refused, reason, "Expecting property name")
    record = ConsumerRecord(
        written.topic,
        2,
        dlq_offset,
        dlq_timestamp,
        0,
        written.key,
        written.value,
        None,
        0,
        0,
        tuple(written.headers),
    )
    return DeadLetter.from_record(record)


class TestDecoding:
    def test_reads_what_the_processor_wrote(self) -> None:
        """Reason, error, origin, instance, the original headers and value, count 0."""
        letter = dead_letter(b'{"poison": 1')

        assert (
            DeadLetterReason.NOT_JSON,
            "Expecting property name",
            ("sensor-data", 4, 17, T0 - 60_000),
            "processor-1",
            [("traceparent", b"00-ab-cd-01")],
            (b"sensor-0003", b'{"poison": 1'),
            0,
            None,
        ) == (
            letter.explained.reason if letter.explained else None,
            letter.explained.error if letter.explained else None,
            (
                (
                    letter.explained.original_topic,
                    letter.explained.original_partition,
                    letter.explained.original_offset,
                    letter.explained.original_timestamp,
                )
                if letter.explained
                else None
            ),
            letter.explained.instance if letter.explained else None,
            letter.original_headers,
            (letter.key, letter.value),
            letter.replays,
            letter.problem,
        )

    def test_a_replayed_record_that_fails_again_keeps_its_count(self) -> None:
        """The writer copies the original headers, so the count of the replay that
        failed is in its new dead letter (no change in the processor needed)."""
        letter = dead_letter(headers=[("traceparent", b"x"), (REPLAYS, b"2")])

        assert (2, [("traceparent", b"x")]) == (letter.replays, letter.original_headers)

    def test_a_record_without_our_headers_is_kept_with_its_problem(self) -> None:
        """Not ours (or damaged): reason "unreadable", the missing header named."""
        record = ConsumerRecord("dlq", 0, 5, T0, 0, b"k", b"v", None, 0, 0, (("a", b"b"),))
        letter = DeadLetter.from_record(record)

        assert (
            "unreadable",
            None,
            "header sensorstream.dlq.reason is missing from the DLQ record",
        ) == (letter.reason, letter.explained, letter.problem)

    def test_a_malformed_replay_count_is_a_problem(self) -> None:
        """A count that is not a number cannot be trusted to stop a loop: the letter keeps
        its reason for the reports, but is never replayed."""
        letter = dead_letter(headers=[(REPLAYS, b"many")])

        assert (
            "not_json",
            "header sensorstream-replays must be a whole number >= 0, got 'many'",
            "unreadable",
        ) == (letter.reason, letter.problem, letter.refusal(3))


class TestReplayCount:
    @pytest.mark.parametrize(
        ("headers", "count"),
        [
            ([], 0),
            ([("other", b"7")], 0),
            ([(REPLAYS, b"1")], 1),
            ([(REPLAYS, b"3"), (REPLAYS, b"1")], 3),  # twice: the higher wins
        ],
    )
    def test_counts(self, headers: list[tuple[str, bytes]], count: int) -> None:
        """The header's number; none at all is 0."""
        assert count == replay_count(headers)

    @pytest.mark.parametrize("raw", [b"", b"-1", b"1.5", b"\xff", b"\xd9\xa3"])
    def test_refuses_what_is_not_a_count(self, raw: bytes) -> None:
        """Only ASCII digits; an Arabic-Indic digit is not a count."""
        with pytest.raises(ValueError, match="must be a whole number"):
            replay_count([(REPLAYS, raw)])


class TestReplay:
    def test_replays_the_original_headers_and_the_next_count(self) -> None:
        """Our sensorstream.dlq.* headers go, the old count is replaced by one more."""
        letter = dead_letter(headers=[("traceparent", b"t"), (REPLAYS, b"1"), ("z", b"")])

        assert [("traceparent", b"t"), ("z", b""), (REPLAYS, b"2")] == letter.replay_headers()

    def test_first_replay_is_count_one(self) -> None:
        """A letter of an event never replayed goes back with sensorstream-replays: 1."""
        assert [(REPLAYS, b"1")] == dead_letter(headers=[]).replay_headers()

    @pytest.mark.parametrize(
        ("count", "max_replays", "refusal"),
        [(0, 3, None), (2, 3, None), (3, 3, "max_replays"), (1, 1, "max_replays")],
    )
    def test_max_replays(self, count: int, max_replays: int, refusal: str | None) -> None:
        """Skipped once its event was replayed --max-replays times."""
        letter = dead_letter(headers=[(REPLAYS, str(count).encode())])

        assert refusal == letter.refusal(max_replays)

    def test_a_cut_value_is_never_replayed(self) -> None:
        """The DLQ holds only the head of a value cut to fit: replaying it would be wrong."""
        letter = dead_letter(b"x" * 10_000, max_bytes=4096)

        assert (True, "truncated") == (
            letter.explained is not None and letter.explained.original_size == 10_000,
            letter.refusal(3),
        )

    def test_an_unreadable_letter_is_never_replayed(self) -> None:
        """Without our headers nothing says what it was."""
        record = ConsumerRecord("dlq", 0, 5, T0, 0, b"k", b"v", None, 0, 0, ())
        assert "unreadable" == DeadLetter.from_record(record).refusal(3)

    def test_report(self) -> None:
        """Replayed by reason, skipped by why, and exit 1 when something was skipped."""
        report = ReplayReport("dlq", "in", "g", False, 1, Selection())
        report.replayed["not_json"] += 2
        report.skip(dead_letter(headers=[(REPLAYS, b"1")]), "max_replays")
        summary = report.to_json()

        assert (
            1,
            3,
            2,
            {"max_replays": 1},
            [
                {
                    "partition": 2,
                    "offset": 40,
                    "reason": "not_json",
                    "replays": 1,
                    "why": "max_replays",
                }
            ],
        ) == (
            report.exit_status,
            summary["selected"],
            summary["replayed"],
            summary["skipped"],
            summary["skipped_letters"],
        )


class TestRenderBytes:
    @pytest.mark.parametrize(
        ("value", "max_bytes", "rendered"),
        [
            (None, 10, (None, False, False)),
            (b"", 10, ("", False, False)),
            (b'{"poison": 1', 200, ('{"poison": 1', False, False)),
            (b"abcdef", 3, ("abc", True, False)),
            # "é" is two bytes: never cut in the middle of a character.
            ("aé".encode(), 2, ("a", True, False)),
            ("a€b".encode(), 3, ("a", True, False)),
            (b"\xff\xfeok", 10, ("\\xff\\xfeok", False, True)),
            (b"\xff" + b"x" * 10, 4, ("\\xffxxx", True, True)),
        ],
    )
    def test_utf8_or_escaped_and_cut(
        self, value: bytes | None, max_bytes: int, rendered: tuple[str | None, bool, bool]
    ) -> None:
        """UTF-8 text when it is, else the other bytes escaped; cut to max_bytes."""
        assert rendered == render_bytes(value, max_bytes)


class TestShowJson:
    def test_every_header_decoded(self) -> None:
        """The whole letter as ``show --json`` prints it."""
        letter = dead_letter(b'{"poison": 12345', headers=[("trace", b"t"), (REPLAYS, b"1")])

        assert {
            "partition": 2,
            "offset": 40,
            "dead_lettered_at": "2024-05-01T12:00:00.000Z",
            "timestamp_ms": T0,
            "reason": "not_json",
            "error": "Expecting property name",
            "problem": None,
            "original": {
                "topic": "sensor-data",
                "partition": 4,
                "offset": 17,
                "timestamp": "2024-05-01T11:59:00.000Z",
                "timestamp_ms": T0 - 60_000,
            },
            "instance": "processor-1",
            "lateness_ms": None,
            "original_size": None,
            "sha256": None,
            "replays": 1,
            "headers": {"trace": "t"},
            "key": "sensor-0003",
            "key_escaped": False,
            "value": '{"poison"',
            "value_bytes": 16,
            "value_truncated": True,
            "value_escaped": False,
        } == letter.to_json(max_bytes=9)


class TestCounts:
    def test_by_reason_origin_and_bucket(self) -> None:
        """Buckets are aligned to the epoch (UTC); every letter is in exactly one."""
        counts = DeadLetterCounts(bucket_ms=3_600_000)
        for reason, at in [
            (DeadLetterReason.NOT_JSON, T0),
            (DeadLetterReason.NOT_JSON, T0 + 3_599_999),
            (DeadLetterReason.EMPTY, T0 + 3_600_000),
        ]:
            counts.add(dead_letter(reason=reason, dlq_timestamp=at))
        counts.add(
            DeadLetter.from_record(ConsumerRecord("d", 0, 0, T0, 0, None, b"", None, 0, 0, ()))
        )

        assert {
            "total": 4,
            "first": "2024-05-01T12:00:00.000Z",
            "last": "2024-05-01T13:00:00.000Z",
            "by_reason": {"not_json": 2, "empty": 1, "unreadable": 1},
            "by_origin": [{"topic": "sensor-data", "partition": 4, "count": 3}],
            "bucket_seconds": 3600.0,
            "by_bucket": [
                {"start": "2024-05-01T12:00:00.000Z", "start_ms": T0, "count": 3},
                {"start": "2024-05-01T13:00:00.000Z", "start_ms": T0 + 3_600_000, "count": 1},
            ],
        } == counts.to_json()
