"""Test helpers for code that consumes the event contract.

* ``malformed_corpus()``: payloads that must be rejected, each with its expected
  reason. The processor's reliability tests feed these to a running pipeline.
* ``readings()``: a hypothesis strategy for valid v1 readings.
* ``valid_payload()``: one realistic encoded v1 event.

Importing this module costs nothing extra: hypothesis (a dev dependency) is only
imported when ``readings()`` is called.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import orjson

from ._constants import (
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    SEQ_RANGE,
    TEMPERATURE_RANGE,
)
from ._rejection import RejectReason

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from ._models import SensorReading

__all__ = ["malformed_corpus", "readings", "valid_payload"]

_VALID: dict[str, Any] = {
    "schema_version": SCHEMA_VERSION,
    "event_id": "0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
    "sensor_id": "sensor-0007",
    "seq": 41,
    "event_time": 1_700_000_000_123,
    "temperature": 22.5,
    "humidity": 40.1,
}


def valid_payload(**overrides: Any) -> bytes:
    """A realistic v1 event as bytes; ``overrides`` replace fields (``...`` removes one)."""
    fields = {**_VALID, **overrides}
    return orjson.dumps({name: value for name, value in fields.items() if value is not ...})


def _with_raw(field: str, raw: str) -> bytes:
    """A valid event whose ``field`` holds the JSON text ``raw`` verbatim (NaN, 1e400...)."""
    return valid_payload(**{field: 0}).replace(f'"{field}":0'.encode(), f'"{field}":{raw}'.encode())


def malformed_corpus() -> list[tuple[RejectReason, bytes]]:
    """Every RejectReason with at least one payload that must produce exactly it.

    Includes the extremes a reliability test needs: a 1 MiB value, 100000 levels of
    ``[`` (refused as too_large before parsing) and 2000 (refused as too_deep),
    random bytes, and the empty value. ``None`` (a tombstone) is not bytes, so it is
    not listed: test it separately (it gives ``empty``).
    """
    noise = random.Random(20240601).randbytes(512)  # fixed seed: the same corpus every run
    return [
        (RejectReason.EMPTY, b""),
        (RejectReason.TOO_LARGE, b'{"padding": "' + b"x" * (1024 * 1024) + b'"}'),
        (RejectReason.TOO_LARGE, b"[" * 100_000),
        (RejectReason.TOO_LARGE, valid_payload(padding="x" * MAX_EVENT_BYTES)),
        (RejectReason.TOO_DEEP, b"[" * 2_000 + b"]" * 2_000),
        (RejectReason.TOO_DEEP, b'{"a":' * 1_500 + b"1" + b"}" * 1_500),
        (RejectReason.INVALID_UTF8, b"\xff\xfe\xfd"),
        (RejectReason.INVALID_UTF8, b"\xff" + noise),
        (
            RejectReason.INVALID_UTF8,
            valid_payload(sensor_id="sensor-\u00e9").replace(b"\xc3", b"\xc0"),
        ),
        (RejectReason.INVALID_UTF8, b'{"sensor_id": "\xed\xa0\x80"}'),  # an encoded surrogate
        (RejectReason.NOT_JSON, b"{"),
        (RejectReason.NOT_JSON, b"not json at all"),
        (RejectReason.NOT_JSON, b"   "),
        (RejectReason.NOT_JSON, valid_payload() + b" trailing"),
        (RejectReason.NOT_JSON, b'{"temperature": 22.5,}'),
        (RejectReason.NOT_OBJECT, b"[1, 2, 3]"),
        (RejectReason.NOT_OBJECT, b'"sensor-0007"'),
        (RejectReason.NOT_OBJECT, b"null"),
        (RejectReason.NOT_OBJECT, b"42"),
        (RejectReason.MISSING_FIELD, b"{}"),
        (RejectReason.MISSING_FIELD, valid_payload(event_id=...)),
        (RejectReason.MISSING_FIELD, valid_payload(humidity=...)),
        (
            RejectReason.MISSING_FIELD,
            b'{"sensor_id": 7, "temperature": 22.5, "timestamp": 1700000000}',
        ),
        (RejectReason.WRONG_TYPE, valid_payload(seq=True)),
        (RejectReason.WRONG_TYPE, valid_payload(seq=None)),
        (RejectReason.WRONG_TYPE, valid_payload(seq=1.5)),
        (RejectReason.WRONG_TYPE, valid_payload(event_time=1_700_000_000.5)),
        (RejectReason.WRONG_TYPE, valid_payload(temperature="22.5")),
        (RejectReason.WRONG_TYPE, valid_payload(humidity=None)),
        (RejectReason.WRONG_TYPE, valid_payload(sensor_id=7)),
        (RejectReason.WRONG_TYPE, valid_payload(schema_version="1")),
        (RejectReason.WRONG_TYPE, _with_raw("seq", "123456789012345678901234567890")),
        (RejectReason.OUT_OF_RANGE, valid_payload(temperature=500.0)),
        (RejectReason.OUT_OF_RANGE, valid_payload(temperature=TEMPERATURE_RANGE[0] - 0.1)),
        (RejectReason.OUT_OF_RANGE, valid_payload(humidity=HUMIDITY_RANGE[1] + 0.1)),
        (RejectReason.OUT_OF_RANGE, valid_payload(event_time=EVENT_TIME_RANGE[0] - 1)),
        (RejectReason.OUT_OF_RANGE, valid_payload(event_time=1_700_000_000)),  # seconds, not ms
        (RejectReason.OUT_OF_RANGE, valid_payload(seq=SEQ_RANGE[0] - 1)),
        (RejectReason.OUT_OF_RANGE, valid_payload(sensor_id="")),
        (RejectReason.OUT_OF_RANGE, valid_payload(sensor_id="sensor 7")),
        (RejectReason.OUT_OF_RANGE, valid_payload(sensor_id="s" * 65)),
        (RejectReason.OUT_OF_RANGE, valid_payload(event_id="0B6D3C1E-8F7A-4C2B-9D5E-1A2B3C4D5E6F")),
        (RejectReason.OUT_OF_RANGE, valid_payload(event_id="not-a-uuid")),
        (RejectReason.NOT_FINITE, _with_raw("temperature", "NaN")),
        (RejectReason.NOT_FINITE, _with_raw("temperature", "Infinity")),
        (RejectReason.NOT_FINITE, _with_raw("humidity", "-Infinity")),
        (RejectReason.NOT_FINITE, _with_raw("humidity", "1e400")),
        (RejectReason.UNKNOWN_VERSION, valid_payload(schema_version=2)),
        (RejectReason.UNKNOWN_VERSION, valid_payload(schema_version=0)),
    ]


def readings() -> SearchStrategy[SensorReading]:
    """A hypothesis strategy for valid v1 readings, edges of every range included."""
    from hypothesis import strategies as st

    from ._models import SensorReading

    def finite_in(bounds: tuple[float, float]) -> SearchStrategy[float]:
        low, high = bounds
        return st.one_of(
            st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False),
            st.integers(min_value=int(low), max_value=int(high)).map(float),
        )

    return st.builds(
        SensorReading,
        schema_version=st.just(SCHEMA_VERSION),
        event_id=st.uuids().map(str),
        sensor_id=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
        seq=st.integers(min_value=SEQ_RANGE[0], max_value=SEQ_RANGE[1]),
        event_time=st.integers(min_value=EVENT_TIME_RANGE[0], max_value=EVENT_TIME_RANGE[1]),
        temperature=finite_in(TEMPERATURE_RANGE),
        humidity=finite_in(HUMIDITY_RANGE),
    )
