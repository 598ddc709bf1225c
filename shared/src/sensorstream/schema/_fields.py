"""Declarative field checks: the readable statement of what a valid event looks like.

Each wire type lists its fields as ``FieldSpec`` values. ``check_fields`` walks that
list and explains the first problem as a ``Rejection``. The reading decoder's fast
paths (msgspec constraints, and checks inlined after orjson) restate the same rules
for speed and fall back to ``check_fields`` to explain a failure; the unit tests hold
them to it, so this module is the single source of the rules and their messages.
It runs on bad events (and on the less hot output topics), never on the good path
of ``decode_reading``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ._rejection import Rejection, RejectReason, shown

MISSING: Final = object()
"""Sentinel for ``dict.get``: tells an absent key from an explicit ``null``."""

_JSON_TYPE_NAMES: Final[Mapping[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_type_name(value: object) -> str:
    """Name a decoded value's JSON type, as a producer's author would say it."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """One required key of a wire object and the values it may hold."""

    name: str
    kind: Literal["integer", "number", "string"]
    nullable: bool = False
    bounds: tuple[float, float] | None = None
    matches: Callable[[str], object] | None = None
    must_be: str = ""  # completes "<name>: <value> is not ...", e.g. "a canonical lowercase UUID"


def check_fields(obj: Mapping[str, object], fields: Sequence[FieldSpec]) -> Rejection | None:
    """Explain the first field of ``obj`` that breaks its spec, or ``None`` if all hold."""
    for spec in fields:
        rejection = _check_field(spec, obj.get(spec.name, MISSING))
        if rejection is not None:
            return rejection
    return None


def _check_field(spec: FieldSpec, value: object) -> Rejection | None:
    name = spec.name
    if value is MISSING:
        return Rejection(RejectReason.MISSING_FIELD, f"{name}: required field is missing")
    if value is None:
        if spec.nullable:
            return None
        return Rejection(RejectReason.WRONG_TYPE, f"{name}: expected {spec.kind}, got null")
    if spec.kind == "string":
        if type(value) is not str:
            return _wrong_type(spec, value)
        if spec.matches is not None and not spec.matches(value):
            return Rejection(
                RejectReason.OUT_OF_RANGE, f"{name}: {shown(value)} is not {spec.must_be}"
            )
        return None
    # `type(...) is` on purpose: bool is a subclass of int but never a valid number here.
    allowed = (int,) if spec.kind == "integer" else (int, float)
    if type(value) not in allowed:
        return _wrong_type(spec, value)
    if isinstance(value, float) and not math.isfinite(value):
        return Rejection(RejectReason.NOT_FINITE, f"{name}: {shown(value)} is not a finite number")
    if spec.bounds is not None:
        low, high = spec.bounds
        assert isinstance(value, int | float)  # narrowed by the type check above
        if not low <= value <= high:
            return Rejection(
                RejectReason.OUT_OF_RANGE, f"{name}: {shown(value)} is out of range {low}..{high}"
            )
    return None


def _wrong_type(spec: FieldSpec, value: object) -> Rejection:
    return Rejection(
        RejectReason.WRONG_TYPE,
        f"{spec.name}: expected {spec.kind}, got {json_type_name(value)} {shown(value)}",
    )
