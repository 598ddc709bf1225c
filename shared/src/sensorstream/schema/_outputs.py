"""Codecs for the processor's outputs: window aggregates and alerts.

These topics are written only by our own processor, so decoding is strict and
raises ``PoisonEventError`` (consumers of these topics are dashboards and tests,
not the hot path). Unknown extra keys are ignored, as on the input topic.
"""

from __future__ import annotations

from typing import Final, get_args

import orjson

from ._constants import EVENT_TIME_RANGE, SEQ_RANGE, is_event_id, is_sensor_id
from ._errors import PoisonEventError
from ._fields import FieldSpec, check_fields
from ._models import Alert, AlertKind, WindowAggregate
from ._rejection import Rejection, RejectReason, shown
from ._wire import Payload, load_object

ALERT_KINDS: Final[frozenset[str]] = frozenset(get_args(AlertKind))

_SENSOR_ID: Final = FieldSpec(
    name="sensor_id",
    kind="string",
    matches=is_sensor_id,
    must_be="1..64 characters of A-Za-z0-9._:-",
)

AGGREGATE_FIELDS: Final = (
    _SENSOR_ID,
    FieldSpec(name="window_start", kind="integer", bounds=EVENT_TIME_RANGE),
    FieldSpec(name="window_end", kind="integer", bounds=EVENT_TIME_RANGE),
    FieldSpec(name="count", kind="integer", bounds=(1, SEQ_RANGE[1])),
    *(
        FieldSpec(name=f"{measure}_{stat}", kind="number")
        for measure in ("temperature", "humidity")
        for stat in ("min", "max", "mean")
    ),
    FieldSpec(name="first_seq", kind="integer", nullable=True, bounds=SEQ_RANGE),
    FieldSpec(name="last_seq", kind="integer", nullable=True, bounds=SEQ_RANGE),
)

ALERT_FIELDS: Final = (
    _SENSOR_ID,
    FieldSpec(
        name="kind",
        kind="string",
        matches=ALERT_KINDS.__contains__,
        must_be=f"one of {', '.join(sorted(ALERT_KINDS))}",
    ),
    FieldSpec(name="value", kind="number"),
    FieldSpec(name="threshold", kind="number"),
    FieldSpec(name="event_time", kind="integer", bounds=EVENT_TIME_RANGE),
    FieldSpec(
        name="event_id", kind="string", matches=is_event_id, must_be="a canonical lowercase UUID"
    ),
)


def encode_aggregate(aggregate: WindowAggregate) -> bytes:
    """Serialize ``aggregate`` as a compact JSON object, keys in field order."""
    return orjson.dumps(aggregate)


def decode_aggregate(data: Payload) -> WindowAggregate:
    """Decode and validate an aggregate; raise ``PoisonEventError`` if it is malformed."""
    obj = _checked_object(data, AGGREGATE_FIELDS)
    if obj["window_start"] >= obj["window_end"]:  # type: ignore[operator]
        raise PoisonEventError(
            Rejection(
                RejectReason.OUT_OF_RANGE,
                f"window_end: {obj['window_end']} is not after window_start {obj['window_start']}",
            )
        )
    return WindowAggregate(
        sensor_id=obj["sensor_id"],  # type: ignore[arg-type]
        window_start=obj["window_start"],  # type: ignore[arg-type]
        window_end=obj["window_end"],  # type: ignore[arg-type]
        count=obj["count"],  # type: ignore[arg-type]
        temperature_min=float(obj["temperature_min"]),  # type: ignore[arg-type]
        temperature_max=float(obj["temperature_max"]),  # type: ignore[arg-type]
        temperature_mean=float(obj["temperature_mean"]),  # type: ignore[arg-type]
        humidity_min=float(obj["humidity_min"]),  # type: ignore[arg-type]
        humidity_max=float(obj["humidity_max"]),  # type: ignore[arg-type]
        humidity_mean=float(obj["humidity_mean"]),  # type: ignore[arg-type]
        first_seq=obj["first_seq"],  # type: ignore[arg-type]
        last_seq=obj["last_seq"],  # type: ignore[arg-type]
    )


def encode_alert(alert: Alert) -> bytes:
    """Serialize ``alert`` as a compact JSON object, keys in field order."""
    return orjson.dumps(alert)


def decode_alert(data: Payload) -> Alert:
    """Decode and validate an alert; raise ``PoisonEventError`` if it is malformed."""
    obj = _checked_object(data, ALERT_FIELDS)
    return Alert(
        sensor_id=obj["sensor_id"],  # type: ignore[arg-type]
        kind=obj["kind"],  # type: ignore[arg-type]
        value=float(obj["value"]),  # type: ignore[arg-type]
        threshold=float(obj["threshold"]),  # type: ignore[arg-type]
        event_time=obj["event_time"],  # type: ignore[arg-type]
        event_id=obj["event_id"],  # type: ignore[arg-type]
    )


def _checked_object(data: Payload, fields: tuple[FieldSpec, ...]) -> dict[str, object]:
    """Parse ``data`` and check it against ``fields``; raise ``PoisonEventError`` if not."""
    try:
        obj = load_object(data)
    except (RecursionError, MemoryError, TypeError, ValueError) as exc:
        raise PoisonEventError(
            Rejection(RejectReason.NOT_JSON, f"value: cannot be decoded ({shown(exc)})")
        ) from exc
    if type(obj) is Rejection:
        raise PoisonEventError(obj)
    assert type(obj) is dict
    rejection = check_fields(obj, fields)
    if rejection is not None:
        raise PoisonEventError(rejection)
    return obj
