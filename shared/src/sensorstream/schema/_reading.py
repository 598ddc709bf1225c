"""The sensor reading: the one event type on the input topic, and its codec.

Wire form (schema v1) is a JSON object with exactly these keys::

    {"schema_version": 1, "event_id": "<uuid>", "sensor_id": "sensor-0007", "seq": 41,
     "event_time": 1700000000123, "temperature": 22.5, "humidity": 40.1}

Unknown extra keys are ignored, so a later producer may add a field without
breaking this consumer (forward compatibility); a field that changes meaning gets
a new ``schema_version`` instead. Legacy v0 payloads (no ``schema_version``) are
upgraded on decode, see ``_legacy``.

``decode_reading`` runs once per consumed event and must never raise: every bad
payload becomes a ``Rejection`` for the dead-letter topic, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from ._constants import (
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    SCHEMA_VERSION,
    SEQ_RANGE,
    TEMPERATURE_RANGE,
    is_event_id,
    is_sensor_id,
)
from ._errors import PoisonEventError
from ._fields import MISSING, FieldSpec, check_fields, json_type_name
from ._legacy import is_legacy, upgrade_legacy
from ._models import SensorReading
from ._rejection import Rejection, RejectReason, shown
from ._wire import Payload, load_object

READING_FIELDS: Final = (
    FieldSpec(
        name="event_id", kind="string", matches=is_event_id, must_be="a canonical lowercase UUID"
    ),
    FieldSpec(
        name="sensor_id",
        kind="string",
        matches=is_sensor_id,
        must_be="1..64 characters of A-Za-z0-9._:-",
    ),
    FieldSpec(name="seq", kind="integer", bounds=SEQ_RANGE),
    FieldSpec(name="event_time", kind="integer", bounds=EVENT_TIME_RANGE),
    FieldSpec(name="temperature", kind="number", bounds=TEMPERATURE_RANGE),
    FieldSpec(name="humidity", kind="number", bounds=HUMIDITY_RANGE),
)
"""The v1 rules after ``schema_version``, in wire order; explains every rejection."""

_T_LOW, _T_HIGH = TEMPERATURE_RANGE
_H_LOW, _H_HIGH = HUMIDITY_RANGE
_E_LOW, _E_HIGH = EVENT_TIME_RANGE
_S_LOW, _S_HIGH = SEQ_RANGE
_new = object.__new__


def _slot_setter(name: str) -> Callable[[SensorReading, Any], None]:
    setter: Callable[[SensorReading, Any], None] = vars(SensorReading)[name].__set__
    return setter


# The frozen dataclass __init__ pays object.__setattr__ per field (~2x the whole
# parse); the slot descriptors store the same values without that detour.
_set_schema_version = _slot_setter("schema_version")
_set_event_id = _slot_setter("event_id")
_set_sensor_id = _slot_setter("sensor_id")
_set_seq = _slot_setter("seq")
_set_event_time = _slot_setter("event_time")
_set_temperature = _slot_setter("temperature")
_set_humidity = _slot_setter("humidity")


def _reading(
    schema_version: int,
    event_id: str,
    sensor_id: str,
    seq: int | None,
    event_time: int,
    temperature: float,
    humidity: float,
) -> SensorReading:
    """Build a reading from values already validated, skipping the frozen __init__."""
    reading: SensorReading = _new(SensorReading)
    _set_schema_version(reading, schema_version)
    _set_event_id(reading, event_id)
    _set_sensor_id(reading, sensor_id)
    _set_seq(reading, seq)
    _set_event_time(reading, event_time)
    _set_temperature(reading, temperature)
    _set_humidity(reading, humidity)
    return reading


def encode_reading(reading: SensorReading) -> bytes:
    """Serialize ``reading`` to its v1 wire form (compact UTF-8 JSON, keys in field order).

    The model is trusted, not re-validated: the decoder is the gatekeeper. A reading
    upgraded from v0 has no v1 wire form (it has no ``seq``), so it raises ValueError:
    forward the original bytes instead.
    """
    if reading.schema_version != SCHEMA_VERSION or reading.seq is None:
        raise ValueError(
            f"cannot encode a schema_version={reading.schema_version} reading with "
            f"seq={reading.seq} as v1; forward the original payload bytes instead"
        )
    return orjson.dumps(reading)


def decode_reading(data: Payload) -> SensorReading | Rejection:
    """Decode and validate one Kafka value; never raises, whatever ``data`` holds."""
    try:
        return _decode(data)
    except RecursionError as exc:
        return Rejection(RejectReason.TOO_DEEP, f"value: nests too deeply to inspect ({exc})")
    except MemoryError:
        return Rejection(RejectReason.TOO_LARGE, "value: too large to hold in memory")
    except Exception as exc:  # the contract is "never raises": a bad event must not stop a worker
        return Rejection(
            RejectReason.NOT_JSON, f"value: cannot be decoded ({type(exc).__name__}: {exc})"
        )


def parse_reading(data: Payload) -> SensorReading:
    """Like ``decode_reading``, but raise ``PoisonEventError`` instead of returning a Rejection."""
    result = decode_reading(data)
    if type(result) is Rejection:
        raise PoisonEventError(result)
    return result  # type: ignore[return-value]


def _decode(data: Payload) -> SensorReading | Rejection:
    # Hot path, once per event: no logging, no exceptions, no allocation but the result.
    obj = load_object(data)
    if type(obj) is not dict:
        return obj  # type: ignore[return-value]
    get = obj.get
    version = get("schema_version", MISSING)
    if version != SCHEMA_VERSION or type(version) is not int:
        return _decode_other_version(obj, version, data)
    event_id = get("event_id")
    sensor_id = get("sensor_id")
    seq = get("seq")
    event_time = get("event_time")
    temperature = get("temperature")
    humidity = get("humidity")
    if (
        type(event_id) is str
        and is_event_id(event_id)
        and type(sensor_id) is str
        and is_sensor_id(sensor_id)
        and type(seq) is int
        and _S_LOW <= seq <= _S_HIGH
        and type(event_time) is int
        and _E_LOW <= event_time <= _E_HIGH
        and (type(temperature) is float or type(temperature) is int)
        and _T_LOW <= temperature <= _T_HIGH
        and (type(humidity) is float or type(humidity) is int)
        and _H_LOW <= humidity <= _H_HIGH
    ):
        return _reading(
            SCHEMA_VERSION,
            event_id,
            sensor_id,
            seq,
            event_time,
            float(temperature),
            float(humidity),
        )
    return check_fields(obj, READING_FIELDS) or _disagreement(obj)


def _decode_other_version(
    obj: dict[str, object], version: object, data: Payload
) -> SensorReading | Rejection:
    """Route a payload whose ``schema_version`` is not the integer 1."""
    if version is MISSING:
        if is_legacy(obj):
            return upgrade_legacy(obj, data)
        return Rejection(
            RejectReason.MISSING_FIELD,
            "schema_version: required field is missing (and the payload is not legacy v0: "
            "no 'timestamp' field)",
        )
    if type(version) is not int:
        return Rejection(
            RejectReason.WRONG_TYPE,
            f"schema_version: expected integer, got {json_type_name(version)} {shown(version)}",
        )
    return Rejection(
        RejectReason.UNKNOWN_VERSION,
        f"schema_version: {shown(version)} is not a known version (this decoder reads "
        f"{SCHEMA_VERSION} and legacy payloads without the field)",
    )


def _disagreement(obj: dict[str, object]) -> Rejection:
    """The fast path refused what the field specs accept: a bug here, never the producer's."""
    return Rejection(
        RejectReason.WRONG_TYPE,
        f"value: refused by the fast path only (please report): {shown(obj)}",
    )
