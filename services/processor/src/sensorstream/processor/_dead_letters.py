"""Dead-letter records: the original record plus why, always small enough for the DLQ.

A dead letter keeps the original key, value and headers and adds the
``sensorstream.dlq.*`` headers (:class:`~sensorstream.schema.DeadLetterHeaders`). A
record just under the input topic's size limit plus our headers may not fit the DLQ
topic's ``max.message.bytes``: then the value is cut so that it fits, and the headers
carry the original size and the SHA-256 of the whole value, so the letter still says
what was refused, why and from where, and can be matched with the original. A letter
is never dropped for its size, and a size problem never takes the service down.

Pure: no Kafka, no clock, no logging.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from sensorstream.schema import DeadLetterHeaders, DeadLetterReason

__all__ = ["DeadLetterWriter", "OutputRecord", "record_size"]

# Kafka's record batch header, and the most a v2 record's varints and attributes take.
_BATCH_OVERHEAD: Final = 61
_RECORD_OVERHEAD: Final = 31
_HEADER_OVERHEAD: Final = 10
_MARGIN: Final = 512
"""Slack for what the estimate cannot know (the broker's own framing)."""


@dataclass(slots=True)
class OutputRecord:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    truncated: bool = False
    """A dead letter whose value was cut to fit the DLQ (see the module doc)."""


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """An upper bound of the bytes one record takes in its own batch on the broker."""
    size = _BATCH_OVERHEAD + _RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header_value in headers:
        size += _HEADER_OVERHEAD + len(name.encode()) + len(header_value)
    return size


class DeadLetterWriter:
    """Builds dead letters for one processor: its DLQ topic, instance name and size limit."""

    def __init__(self, *, topic: str, instance: str, max_bytes: int) -> None:
        if max_bytes < 4096:
            raise ValueError(
                f"a DLQ that takes under 4096 bytes per record is unusable: {max_bytes}"
            )
        self.topic = topic
        self.instance = instance
        self.max_bytes = max_bytes
        """The DLQ's record limit: the smaller of its max.message.bytes and the producer's."""

    def letter(
        self, record: Any, reason: DeadLetterReason, error: str, *, lateness_ms: int | None = None
    ) -> OutputRecord:
        """The dead letter of consumed ``record`` (cut to fit, see the module doc)."""
        headers = DeadLetterHeaders(
            reason=reason,
            error=error,
            original_topic=record.topic,
            original_partition=record.partition,
            original_offset=record.offset,
            original_timestamp=record.timestamp,
            instance=self.instance,
            lateness_ms=lateness_ms,
        )
        original = list(record.headers or ())
        value: bytes | None = record.value
        ours = headers.to_kafka_headers()
        if record_size(record.key, value, [*original, *ours]) + _MARGIN <= self.max_bytes:
            return OutputRecord(self.topic, record.key, value, [*original, *ours])
        return self._cut(record.key, value or b"", original, headers, self.max_bytes)

    def shrink(self, letter: OutputRecord) -> OutputRecord:
        """``letter`` once the broker refused it as too large: keep headers, drop the value.

        For a DLQ whose limit is below what this writer was told; the headers still name
        the reason, the original position, size and hash.
        """
        ours = DeadLetterHeaders.from_kafka_headers(letter.headers)
        if ours.original_size is None:  # not cut yet: describe the whole value
            value = letter.value or b""
            ours = replace(ours, original_size=len(value), sha256=hashlib.sha256(value).hexdigest())
        return OutputRecord(letter.topic, letter.key, b"", ours.to_kafka_headers(), True)

    def _cut(
        self,
        key: bytes | None,
        value: bytes,
        original: list[tuple[str, bytes]],
        headers: DeadLetterHeaders,
        limit: int,
    ) -> OutputRecord:
        marked = replace(
            headers, original_size=len(value), sha256=hashlib.sha256(value).hexdigest()
        )
        ours = marked.to_kafka_headers()
        room = limit - _MARGIN - record_size(key, b"", [*original, *ours])
        if room < 0:  # the original headers alone are too large: keep only ours
            original = []
            room = max(0, limit - _MARGIN - record_size(key, b"", ours))
        return OutputRecord(self.topic, key, value[:room], [*original, *ours], True)
