"""Why an event was refused: a closed set of reason codes plus a human message.

The reason is a bounded value, safe as a metric label and as the dead-letter
``reason`` header; the message is for people and is never used as a label.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

_SHOWN_CHARS: Final = 60


class RejectReason(enum.StrEnum):
    """Why the decoder refused an event; the wire value is the lowercase string."""

    INVALID_UTF8 = "invalid_utf8"
    """The bytes are not valid UTF-8, so they cannot be JSON text."""
    NOT_JSON = "not_json"
    """Valid UTF-8 but not one JSON value (syntax error, trailing garbage, blank)."""
    NOT_OBJECT = "not_object"
    """Valid JSON whose top level is not an object (an array, a string, ...)."""
    MISSING_FIELD = "missing_field"
    """A required key is absent."""
    WRONG_TYPE = "wrong_type"
    """A field has the wrong JSON type (``true`` is not an integer; ``null`` is no value)."""
    OUT_OF_RANGE = "out_of_range"
    """A value lies outside its field's domain: a numeric range, a length or a pattern."""
    NOT_FINITE = "not_finite"
    """A number is NaN or infinite (``NaN``, ``Infinity`` literals or ``1e400``)."""
    UNKNOWN_VERSION = "unknown_version"
    """``schema_version`` names a version this decoder does not understand."""
    TOO_LARGE = "too_large"
    """The payload is larger than ``MAX_EVENT_BYTES``."""
    TOO_DEEP = "too_deep"
    """The JSON nests deeper than the parser allows (1024 levels)."""
    EMPTY = "empty"
    """The Kafka value is ``None`` (a tombstone) or zero bytes long."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the decoder refused, and why.

    ``message`` names the field and quotes the bad value, truncated, e.g.
    ``"temperature: 500.0 is out of range -100.0..200.0"``.
    """

    reason: RejectReason
    message: str


def shown(value: object) -> str:
    """Quote a bad value for a message, truncated so a 1 MiB payload stays a short line."""
    if value is None or type(value) is bool:
        text = "null" if value is None else str(value).lower()  # JSON spelling
    else:
        text = repr(value)
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]}... ({len(text)} chars)"
    return text
