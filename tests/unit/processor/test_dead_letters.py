"""Specification of dead letters: the original record plus why, always fitting the DLQ."""

from __future__ import annotations

import hashlib

import pytest
from consumed_records import Record

from sensorstream.processor._dead_letters import DeadLetterWriter, OutputRecord, record_size
from sensorstream.schema import DeadLetterHeaders, DeadLetterReason

LIMIT = 20_000


def writer(max_bytes: int = LIMIT) -> DeadLetterWriter:
    return DeadLetterWriter(topic="dlq", instance="i", max_bytes=max_bytes)


def original(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Record:
    return Record("sensor-data", 1, 7, 123, b"k", value, headers or [("h", b"1")])


class TestLetter:
    def test_keeps_the_original_record_and_appends_our_headers(self) -> None:
        """Key, value and headers unchanged; the sensorstream.dlq.* headers come after."""
        letter = writer().letter(original(b"v"), DeadLetterReason.HANDLER_FAILED, "boom")

        assert (
            OutputRecord(
                topic="dlq",
                key=b"k",
                value=b"v",
                headers=[
                    ("h", b"1"),
                    *DeadLetterHeaders(
                        reason=DeadLetterReason.HANDLER_FAILED,
                        error="boom",
                        original_topic="sensor-data",
                        original_partition=1,
                        original_offset=7,
                        original_timestamp=123,
                        instance="i",
                    ).to_kafka_headers(),
                ],
            )
            == letter
        )

    def test_a_late_letter_carries_its_lateness(self) -> None:
        """lateness_ms travels as a header of its own."""
        letter = writer().letter(original(b"v"), DeadLetterReason.LATE_EVENT, "late", lateness_ms=9)

        assert 9 == DeadLetterHeaders.from_kafka_headers(letter.headers).lateness_ms

    def test_a_letter_too_large_for_the_dlq_is_cut_and_says_so(self) -> None:
        """The value is cut to fit; original size and SHA-256 of the whole value in headers."""
        value = bytes(range(256)) * 200  # 51,200 bytes
        letter = writer().letter(original(value), DeadLetterReason.TOO_LARGE, "too large")

        headers = DeadLetterHeaders.from_kafka_headers(letter.headers)
        assert letter.value is not None
        assert (True, len(value), hashlib.sha256(value).hexdigest()) == (
            letter.truncated,
            headers.original_size,
            headers.sha256,
        )
        assert value.startswith(letter.value)
        assert LIMIT - 1_000 < record_size(letter.key, letter.value, letter.headers) <= LIMIT

    def test_original_headers_too_large_to_keep_are_dropped(self) -> None:
        """If the original headers alone overflow the DLQ, only ours stay."""
        big_headers = [("blob", b"x" * 30_000)]
        letter = writer().letter(original(b"v", big_headers), DeadLetterReason.NOT_JSON, "not json")

        assert [] == [h for h in letter.headers if h[0] == "blob"]
        assert record_size(letter.key, letter.value, letter.headers) <= LIMIT

    def test_a_uselessly_small_limit_is_refused(self) -> None:
        """A DLQ that cannot even hold our headers is a configuration error."""
        with pytest.raises(ValueError, match="4096"):
            writer(max_bytes=1000)


class TestShrink:
    def test_shrinking_keeps_the_headers_and_drops_the_value(self) -> None:
        """What the broker refused as too large goes again without its value."""
        value = b"y" * 5_000
        letter = writer().letter(original(value), DeadLetterReason.TOO_LARGE, "too large")

        shrunk = writer().shrink(letter)

        headers = DeadLetterHeaders.from_kafka_headers(shrunk.headers)
        assert (b"", True, 5_000, hashlib.sha256(value).hexdigest(), 7) == (
            shrunk.value,
            shrunk.truncated,
            headers.original_size,
            headers.sha256,
            headers.original_offset,
        )

    def test_shrinking_a_cut_letter_keeps_the_original_size_and_hash(self) -> None:
        """The size and hash describe the original value, not the cut one."""
        value = b"z" * 60_000
        letter = writer().letter(original(value), DeadLetterReason.TOO_LARGE, "too large")

        headers = DeadLetterHeaders.from_kafka_headers(writer().shrink(letter).headers)

        assert (60_000, hashlib.sha256(value).hexdigest()) == (
            headers.original_size,
            headers.sha256,
        )
