"""From a Kafka value to a JSON object, or a Rejection saying why not.

This is the first step of every decoder. Every bad payload becomes a Rejection, so
the cost of a bad event is one dead-letter record, never a crashed partition worker;
only interpreter limits (MemoryError) can escape, and the decoders catch those.
"""

from __future__ import annotations

from typing import Final

import orjson

from ._constants import MAX_EVENT_BYTES
from ._fields import json_type_name
from ._rejection import Rejection, RejectReason, shown

Payload = bytes | bytearray | memoryview | None
"""What a Kafka consumer hands over as a record value (``None`` for a tombstone)."""

EMPTY_VALUE: Final = Rejection(
    RejectReason.EMPTY, "value: the Kafka value is empty (None or 0 bytes)"
)

_loads: Final = orjson.loads
_NON_FINITE_LITERALS: Final = ("nan", "inf")  # NaN, Infinity, -Infinity, and lower-case kin


def load_object(data: Payload) -> dict[str, object] | Rejection:
    """Parse ``data`` as one JSON object; map every way it can fail to a RejectReason."""
    # Hot path: one type test, one size test, one parse; exceptions only for bad bytes.
    kind = type(data)
    if kind is bytes or kind is bytearray:
        size = len(data)  # type: ignore[arg-type]
    elif kind is memoryview:
        size = data.nbytes  # type: ignore[union-attr]
    elif data is None:
        return EMPTY_VALUE
    else:
        return Rejection(
            RejectReason.WRONG_TYPE, f"value: expected bytes, got {kind.__name__} {shown(data)}"
        )
    if size > MAX_EVENT_BYTES:
        return Rejection(
            RejectReason.TOO_LARGE,
            f"value: {size} bytes is larger than the limit of {MAX_EVENT_BYTES} bytes",
        )
    if size == 0:
        return EMPTY_VALUE
    try:
        obj = _loads(data)  # type: ignore[arg-type]
    except orjson.JSONDecodeError as exc:
        return _explain_parse_error(data, exc)  # type: ignore[arg-type]
    if type(obj) is not dict:
        return Rejection(
            RejectReason.NOT_OBJECT,
            f"value: expected a JSON object, got {json_type_name(obj)} {shown(obj)}",
        )
    return obj


def _explain_parse_error(
    data: bytes | bytearray | memoryview, exc: orjson.JSONDecodeError
) -> Rejection:
    """Turn orjson's one exception type back into the distinct reasons operators need."""
    problem = exc.msg
    if "depth limit" in problem:
        return Rejection(RejectReason.TOO_DEEP, f"value: JSON nests too deeply ({problem})")
    if "infinity" in problem:  # a literal such as 1e400 overflows a double
        return Rejection(RejectReason.NOT_FINITE, f"value: a number is not finite ({problem})")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as utf8_exc:
        return Rejection(
            RejectReason.INVALID_UTF8,
            f"value: byte {utf8_exc.start} is not valid UTF-8 "
            f"(near {shown(bytes(data)[utf8_exc.start : utf8_exc.start + 8])})",
        )
    # orjson refuses NaN/Infinity as "unexpected character"; its pos counts characters.
    near = text[exc.pos : exc.pos + 20]
    if near.lstrip("+-").lower().startswith(_NON_FINITE_LITERALS):
        return Rejection(
            RejectReason.NOT_FINITE, f"value: {shown(near)} is not a finite JSON number"
        )
    return Rejection(
        RejectReason.NOT_JSON, f"value: not valid JSON ({problem}; near {shown(near)})"
    )
