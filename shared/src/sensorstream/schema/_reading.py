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

It decodes in two tiers. The fast tier is one msgspec pass (C: parse, type and range
checks together) over ``bytes`` with exactly the seven v1 keys, then the two string
patterns in Python; it accepts nothing the slow tier would refuse. The slow tier is
orjson plus ``READING_FIELDS``: it runs for everything the fast tier declines (bad
events, extra keys, legacy v0, other buffers), explains every rejection and is the
definition of the contract; the unit tests check that both tiers agree. An event the
fast tier declines pays for both tiers, about 1 µs more than the slow tier alone: if
producers start sending an extra key, teach ``_WireReadingV1`` that key.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
import orjson

from ._constants import (
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    MAX_EVENT_BYTES,
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
_MAX_KNOWN_SENSOR_IDS: Final = 65_536
_known_sensor_ids: set[str] = set()  # ids that passed the pattern: a set lookup beats the regex


def _within(low: float, high: float) -> msgspec.Meta:
    return msgspec.Meta(ge=low, le=high)


class _WireReadingV1(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The exact shape of a plain valid v1 event, for msgspec to check while it parses.

    Unknown keys make the fast tier decline on purpose: msgspec only skims the values
    it skips (no UTF-8 check; 1e400 passes as a number), where orjson refuses the
    payload. That is also why this is a Struct and not SensorReading itself: msgspec
    cannot forbid unknown keys when it decodes into a dataclass. The patterns are not
    here either: msgspec checks them with a Python ``re`` call each, slower than the
    checks in ``decode_reading``.
    """

    schema_version: Literal[1]
    event_id: str
    sensor_id: str
    seq: Annotated[int, _within(*SEQ_RANGE)]
    event_time: Annotated[int, _within(*EVENT_TIME_RANGE)]
    temperature: Annotated[float, _within(*TEMPERATURE_RANGE)]
    humidity: Annotated[float, _within(*HUMIDITY_RANGE)]


_decode_wire_v1: Final = msgspec.json.Decoder(_WireReadingV1).decode
_new_draft: Final = object.__new__

# is_event_id without the regex (a third of the cost): map each lowercase hex digit
# to "x" and every other byte to something else, then compare with the UUID's shape.
_UUID_SHAPE: Final = b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_UUID_MASK: Final = bytes(
    ord("x") if byte in b"0123456789abcdef" else ord("?") if byte == ord("x") else byte
    for byte in range(256)
)


class _ReadingDraft:
    """A mutable twin of SensorReading with the same slots, for building one cheaply.

    The frozen dataclass __init__ pays ``object.__setattr__`` per field, which costs
    as much as the whole JSON parse; plain slot stores into this twin, then a change
    of ``__class__`` (allowed because the slot layouts are identical), cost a third.
    """

    __slots__ = SensorReading.__slots__

    def __init__(
        self,
        event_id: str,
        sensor_id: str,
        seq: int,
        event_time: int,
        temperature: float,
        humidity: float,
    ) -> None:
        self.schema_version = SCHEMA_VERSION
        self.event_id = event_id
        self.sensor_id = sensor_id
        self.seq = seq
        self.event_time = event_time
        self.temperature = temperature
        self.humidity = humidity


def _is_known_sensor_id(sensor_id: str) -> bool:
    """Check ``sensor_id`` against the pattern once, then remember it (up to a bound)."""
    if not is_sensor_id(sensor_id):
        return False
    if len(_known_sensor_ids) < _MAX_KNOWN_SENSOR_IDS:
        _known_sensor_ids.add(sensor_id)
    return True


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
    # Hot path, once per event: no logging, no allocation but the result, and an
    # exception only when the payload is not a plain valid v1 event.
    if type(data) is bytes and 0 < len(data) <= MAX_EVENT_BYTES:
        try:
            wire = _decode_wire_v1(data)
        except Exception:  # msgspec.DecodeError, RecursionError, ...: the slow tier explains
            return decode_reading_slow(data)
        event_id = wire.event_id
        sensor_id = wire.sensor_id
        if (
            event_id.isascii()
            and event_id.encode().translate(_UUID_MASK) == _UUID_SHAPE
            and (sensor_id in _known_sensor_ids or _is_known_sensor_id(sensor_id))
        ):
            # _ReadingDraft's stores, inlined: in 3.11 a class call costs ~70 ns more
            reading = _new_draft(_ReadingDraft)
            reading.schema_version = SCHEMA_VERSION
            reading.event_id = event_id
            reading.sensor_id = sensor_id
            reading.seq = wire.seq
            reading.event_time = wire.event_time
            reading.temperature = wire.temperature
            reading.humidity = wire.humidity
            reading.__class__ = SensorReading  # type: ignore[assignment]
            return reading  # type: ignore[return-value]
    return decode_reading_slow(data)


def decode_reading_slow(data: Payload) -> SensorReading | Rejection:
    """The slow tier of ``decode_reading``: orjson and ``READING_FIELDS``; never raises."""
    try:
        obj = load_object(data)
        if type(obj) is dict:
            return reading_from_object(obj, data)
        return obj  # type: ignore[return-value]
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


def reading_from_object(obj: dict[str, object], data: Payload) -> SensorReading | Rejection:
    """Validate a parsed payload; ``data`` (the raw bytes) only names upgraded v0 events."""
    # Hot path, once per event: no logging, no allocation but the result, and no
    # exception unless a key is missing (then KeyError takes the slow path).
    version = obj.get("schema_version", MISSING)
    if version != SCHEMA_VERSION or type(version) is not int:
        return _decode_other_version(obj, version, data)
    try:
        event_id = obj["event_id"]
        sensor_id = obj["sensor_id"]
        seq = obj["seq"]
        event_time = obj["event_time"]
        temperature = obj["temperature"]
        humidity = obj["humidity"]
    except KeyError:
        return _checked_reading(obj)
    if (
        type(event_id) is str
        and is_event_id(event_id)
        and type(sensor_id) is str
        and (sensor_id in _known_sensor_ids or _is_known_sensor_id(sensor_id))
        and type(seq) is int
        and _S_LOW <= seq <= _S_HIGH
        and type(event_time) is int
        and _E_LOW <= event_time <= _E_HIGH
        and type(temperature) is float
        and _T_LOW <= temperature <= _T_HIGH
        and type(humidity) is float
        and _H_LOW <= humidity <= _H_HIGH
    ):
        reading = _ReadingDraft(event_id, sensor_id, seq, event_time, temperature, humidity)
        reading.__class__ = SensorReading  # type: ignore[assignment]
        return reading  # type: ignore[return-value]
    return _checked_reading(obj)


def _checked_reading(obj: dict[str, object]) -> SensorReading | Rejection:
    """The slow path: explain what is wrong, or build what the fast path does not take.

    The fast path above is deliberately narrower than READING_FIELDS (it leaves JSON
    integers for temperature and humidity to this path); READING_FIELDS decides.
    """
    rejection = check_fields(obj, READING_FIELDS)
    if rejection is not None:
        return rejection
    return SensorReading(
        schema_version=SCHEMA_VERSION,
        event_id=obj["event_id"],  # type: ignore[arg-type]
        sensor_id=obj["sensor_id"],  # type: ignore[arg-type]
        seq=obj["seq"],  # type: ignore[arg-type]
        event_time=obj["event_time"],  # type: ignore[arg-type]
        temperature=float(obj["temperature"]),  # type: ignore[arg-type]
        humidity=float(obj["humidity"]),  # type: ignore[arg-type]
    )


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
