"""Upgrade legacy v0 payloads to the v1 reading model.

v0 is the format of the classic kafka-python tutorial simulator, still sent by old
field devices::

    {"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}

A payload is v0 when it has no ``schema_version`` key but has a ``timestamp`` key.
It is then validated as v0 and upgraded:

* ``sensor_id`` 7 becomes ``"sensor-0007"`` (zero-padded to 4 digits, more if needed);
* ``timestamp`` (integer epoch *seconds*) becomes ``event_time`` = timestamp * 1000;
* ``seq`` is ``None``: v0 has no sequence, so gap detection skips these events;
* ``event_id`` is a uuid5 of the raw payload bytes under ``LEGACY_EVENT_ID_NAMESPACE``,
  so a replay of the same bytes yields the same id and deduplicates;
* ``schema_version`` reports 0, so callers can count the legacy traffic.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Final

from ._constants import (
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    LEGACY_EVENT_ID_NAMESPACE,
    LEGACY_SCHEMA_VERSION,
    TEMPERATURE_RANGE,
)
from ._fields import FieldSpec, check_fields
from ._models import SensorReading
from ._rejection import Rejection

if TYPE_CHECKING:
    from ._wire import Payload

_MS_PER_SECOND: Final = 1000

LEGACY_FIELDS: Final = (
    FieldSpec(name="sensor_id", kind="integer", bounds=(0, 2**63 - 1)),
    FieldSpec(
        name="timestamp",
        kind="integer",
        bounds=(EVENT_TIME_RANGE[0] // _MS_PER_SECOND, EVENT_TIME_RANGE[1] // _MS_PER_SECOND),
    ),
    FieldSpec(name="temperature", kind="number", bounds=TEMPERATURE_RANGE),
    FieldSpec(name="humidity", kind="number", bounds=HUMIDITY_RANGE),
)
"""The v0 rules; ranges match v1 (seconds instead of milliseconds for time)."""


def is_legacy(obj: dict[str, object]) -> bool:
    """Tell a v0 payload apart: no ``schema_version`` (checked by the caller), a ``timestamp``."""
    return "timestamp" in obj


def legacy_sensor_id(number: int) -> str:
    """Name a v0 numeric sensor the way v1 producers do: 7 -> ``"sensor-0007"``."""
    return f"sensor-{number:04d}"


def legacy_event_id(data: bytes | bytearray | memoryview) -> str:
    """uuid5 of the raw payload bytes (``uuid.uuid5`` takes only str before Python 3.12)."""
    digest = hashlib.sha1(LEGACY_EVENT_ID_NAMESPACE.bytes + bytes(data), usedforsecurity=False)
    return str(uuid.UUID(bytes=digest.digest()[:16], version=5))


def upgrade_legacy(obj: dict[str, object], data: Payload) -> SensorReading | Rejection:
    """Validate a v0 payload and return it as a v1 ``SensorReading`` (schema_version 0)."""
    rejection = check_fields(obj, LEGACY_FIELDS)
    if rejection is not None:
        return rejection
    assert data is not None  # a v0 object was parsed from these bytes
    sensor_number: int = obj["sensor_id"]  # type: ignore[assignment]
    timestamp: int = obj["timestamp"]  # type: ignore[assignment]
    return SensorReading(
        schema_version=LEGACY_SCHEMA_VERSION,
        event_id=legacy_event_id(data),
        sensor_id=legacy_sensor_id(sensor_number),
        seq=None,
        event_time=timestamp * _MS_PER_SECOND,
        temperature=float(obj["temperature"]),  # type: ignore[arg-type]
        humidity=float(obj["humidity"]),  # type: ignore[arg-type]
    )
