"""The headers that explain a dead-lettered event.

The DLQ record keeps the original value and key untouched and the original
headers alongside; these ``sensorstream.dlq.*`` headers add why it failed and
where it came from, so an operator can inspect, fix and replay it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from ._errors import PoisonEventError
from ._rejection import Rejection, RejectReason

HEADER_PREFIX: Final = "sensorstream.dlq."
MAX_ERROR_BYTES: Final = 1000
"""The ``error`` header is cut to this many UTF-8 bytes (so characters), never mid-character."""
REPLAYS_HEADER: Final = "sensorstream-replays"
"""Set by ``sensorstream dlq replay`` on every record it puts back: how often the event
has been replayed (``1`` the first time). It is one of the record's own headers, so the
DLQ keeps it like any other, and a replayed event that fails again carries its count."""


class DeadLetterReason(enum.StrEnum):
    """Why an event went to the dead-letter topic: every RejectReason, plus three more.

    ``DeadLetterReason(reject_reason)`` converts, since the values are shared.
    """

    INVALID_UTF8 = RejectReason.INVALID_UTF8.value
    NOT_JSON = RejectReason.NOT_JSON.value
    NOT_OBJECT = RejectReason.NOT_OBJECT.value
    MISSING_FIELD = RejectReason.MISSING_FIELD.value
    WRONG_TYPE = RejectReason.WRONG_TYPE.value
    OUT_OF_RANGE = RejectReason.OUT_OF_RANGE.value
    NOT_FINITE = RejectReason.NOT_FINITE.value
    UNKNOWN_VERSION = RejectReason.UNKNOWN_VERSION.value
    TOO_LARGE = RejectReason.TOO_LARGE.value
    TOO_DEEP = RejectReason.TOO_DEEP.value
    EMPTY = RejectReason.EMPTY.value
    HANDLER_FAILED = "handler_failed"
    """A valid event made a processing step raise PoisonEventError or fail for good."""
    LATE_EVENT = "late_event"
    """The event arrived after its window closed (beyond the allowed lateness)."""
    FUTURE_EVENT_TIME = "future_event_time"
    """The event's time lies further ahead of the processor's clock than it allows
    (``--max-future-skew``): a device with a wrong clock, not a reading to window."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterHeaders:
    """Why and from where an event was dead-lettered, as Kafka record headers."""

    PREFIX: ClassVar[str] = HEADER_PREFIX
    """Every header of ours starts with it; the others are the original record's."""
    REPLAYS: ClassVar[str] = REPLAYS_HEADER

    reason: DeadLetterReason
    error: str
    """Human-readable detail, e.g. the Rejection message or the handler's exception."""
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp: int
    """The original record's Kafka timestamp, epoch milliseconds."""
    instance: str
    """Which processor instance dead-lettered it (host name or pod name)."""
    lateness_ms: int | None = None
    """``late_event`` only: how far behind its partition's newest event time it was."""
    original_size: int | None = None
    """Only when the value was cut to fit the DLQ: the original value's size in bytes."""
    sha256: str | None = None
    """Only when the value was cut: the hex SHA-256 of the original value."""

    @classmethod
    def for_rejection(
        cls,
        rejection: Rejection | PoisonEventError,
        *,
        original_topic: str,
        original_partition: int,
        original_offset: int,
        original_timestamp: int,
        instance: str,
    ) -> DeadLetterHeaders:
        """Headers for an event the decoder or a handler refused as poison."""
        if isinstance(rejection, PoisonEventError):
            rejection = rejection.rejection
        return cls(
            reason=DeadLetterReason(rejection.reason),
            error=rejection.message,
            original_topic=original_topic,
            original_partition=original_partition,
            original_offset=original_offset,
            original_timestamp=original_timestamp,
            instance=instance,
        )

    def to_kafka_headers(self) -> list[tuple[str, bytes]]:
        """Render as ``(name, value)`` pairs for aiokafka's ``headers=`` argument."""
        return [
            (f"{HEADER_PREFIX}reason", self.reason.value.encode()),
            (f"{HEADER_PREFIX}error", _truncate_utf8(self.error, MAX_ERROR_BYTES)),
            (f"{HEADER_PREFIX}topic", self.original_topic.encode()),
            (f"{HEADER_PREFIX}partition", str(self.original_partition).encode()),
            (f"{HEADER_PREFIX}offset", str(self.original_offset).encode()),
            (f"{HEADER_PREFIX}timestamp", str(self.original_timestamp).encode()),
            (f"{HEADER_PREFIX}instance", self.instance.encode()),
            *(
                (f"{HEADER_PREFIX}{name}", str(value).encode())
                for name, value in (
                    ("lateness_ms", self.lateness_ms),
                    ("original_size", self.original_size),
                    ("sha256", self.sha256),
                )
                if value is not None
            ),
        ]

    @classmethod
    def from_kafka_headers(cls, headers: Sequence[tuple[str, bytes]]) -> DeadLetterHeaders:
        """Read the ``sensorstream.dlq.*`` headers back, ignoring all others.

        Raises ``ValueError`` naming the header if one is missing or malformed.
        """
        ours = {
            name.removeprefix(HEADER_PREFIX): value
            for name, value in headers
            if name.startswith(HEADER_PREFIX)
        }

        def text(key: str) -> str:
            if key not in ours:
                raise ValueError(f"header {HEADER_PREFIX}{key} is missing from the DLQ record")
            return bytes(ours[key]).decode("utf-8", errors="replace")

        def optional_number(key: str) -> int | None:
            return number(key) if key in ours else None

        def number(key: str) -> int:
            value = text(key)
            try:
                return int(value)
            except ValueError:
                raise ValueError(
                    f"header {HEADER_PREFIX}{key} must be an integer, got {value!r}"
                ) from None

        reason = text("reason")
        try:
            dead_letter_reason = DeadLetterReason(reason)
        except ValueError:
            raise ValueError(
                f"header {HEADER_PREFIX}reason {reason!r} is not one of "
                f"{', '.join(DeadLetterReason)}"
            ) from None
        return cls(
            reason=dead_letter_reason,
            error=text("error"),
            original_topic=text("topic"),
            original_partition=number("partition"),
            original_offset=number("offset"),
            original_timestamp=number("timestamp"),
            instance=text("instance"),
            lateness_ms=optional_number("lateness_ms"),
            original_size=optional_number("original_size"),
            sha256=text("sha256") if "sha256" in ours else None,
        )


def _truncate_utf8(text: str, limit: int) -> bytes:
    """Encode ``text`` and cut it to ``limit`` bytes without splitting a character."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return encoded
    return encoded[:limit].decode("utf-8", errors="ignore").encode("utf-8")
