"""How long decoding and validating one input event takes, against the alternatives.

Run: ``uv run python benchmarks/bench_decode.py`` (about 20 s; prints a markdown table).

Each contender turns ~200-byte realistic v1 events into a validated reading:

1. ``decode_reading``: a msgspec typed decode (parse, types and ranges in one C pass)
   plus the two identifier checks, falling back to the orjson tier for anything else
   (what the processor runs);
2. ``decode_reading_slow``: orjson + hand-written validation, the fallback tier alone
   (what ``decode_reading`` was before msgspec);
3. orjson + a pydantic v2 model of the same contract (``model_validate`` of the dict);
4. pydantic's own JSON parser (``model_validate_json``), for reference;
5. stdlib ``json`` + the same hand-written validation;
6. bare ``orjson.loads``: the floor of the orjson tier.

The figure is the best of 5 runs of 200k events, in CPU time (``time.process_time``)
so that other processes on a shared machine inflate it less than wall time would.
The target for ``decode_reading`` is 1 µs/event or less.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sensorstream.schema import (
    EVENT_ID_PATTERN,
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    SENSOR_ID_PATTERN,
    SEQ_RANGE,
    TEMPERATURE_RANGE,
    SensorReading,
    decode_reading,
    encode_reading,
)
from sensorstream.schema._reading import decode_reading_slow, reading_from_object

EVENTS_PER_RUN = 200_000
RUNS = 5
DISTINCT_EVENTS = 4_096  # cycled through, so caches see realistic variety
TARGET_NS = 1_000


class PydanticReading(BaseModel):
    """The v1 contract as a strict pydantic model (bool is not int, no NaN)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True, allow_inf_nan=False)

    schema_version: Annotated[int, Field(ge=1, le=1)]
    event_id: Annotated[str, StringConstraints(pattern=EVENT_ID_PATTERN)]
    sensor_id: Annotated[str, StringConstraints(pattern=SENSOR_ID_PATTERN)]
    seq: Annotated[int, Field(ge=SEQ_RANGE[0], le=SEQ_RANGE[1])]
    event_time: Annotated[int, Field(ge=EVENT_TIME_RANGE[0], le=EVENT_TIME_RANGE[1])]
    temperature: Annotated[
        float, Field(ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1], strict=False)
    ]
    humidity: Annotated[float, Field(ge=HUMIDITY_RANGE[0], le=HUMIDITY_RANGE[1], strict=False)]


def realistic_events(count: int) -> list[bytes]:
    """Encoded readings from 500 sensors, as the producer writes them."""
    rng = random.Random(7)
    events = []
    for i in range(count):
        reading = SensorReading(
            schema_version=1,
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            sensor_id=f"sensor-{rng.randrange(500):04d}",
            seq=1_000 + i,
            event_time=1_700_000_000_000 + i * 250,
            temperature=rng.uniform(-20.0, 45.0),  # unrounded, as simulators send them
            humidity=rng.uniform(10.0, 95.0),
        )
        events.append(encode_reading(reading))
    return events


def ours(event: bytes) -> object:
    return decode_reading(event)


def orjson_hand(event: bytes) -> object:
    return decode_reading_slow(event)


def orjson_pydantic(event: bytes) -> PydanticReading:
    return PydanticReading.model_validate(orjson.loads(event))


def pydantic_json(event: bytes) -> PydanticReading:
    return PydanticReading.model_validate_json(event)


def stdlib_json_hand(event: bytes) -> object:
    return reading_from_object(json.loads(event), event)


def orjson_floor(event: bytes) -> object:
    return orjson.loads(event)


CONTENDERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("msgspec typed decode + orjson fallback (`decode_reading`, ours)", ours),
    ("orjson + hand validation (`decode_reading_slow`, the fallback)", orjson_hand),
    ("orjson + pydantic v2 `model_validate`", orjson_pydantic),
    ("pydantic v2 `model_validate_json`", pydantic_json),
    ("stdlib json + hand validation", stdlib_json_hand),
    ("bare `orjson.loads` (floor, no validation)", orjson_floor),
]


def ns_per_event(decode: Callable[[bytes], Any], events: list[bytes]) -> float:
    """Best of RUNS runs over EVENTS_PER_RUN events, CPU nanoseconds per event."""
    batch = events * (EVENTS_PER_RUN // len(events))
    best = float("inf")
    for _ in range(RUNS):
        start = time.process_time_ns()
        for event in batch:
            decode(event)
        best = min(best, (time.process_time_ns() - start) / len(batch))
    return best


def check_agreement(events: list[bytes]) -> None:
    """All validating contenders accept every event, so the comparison is fair."""
    for event in events[:100]:
        reading = decode_reading(event)
        assert isinstance(reading, SensorReading), reading
        assert reading == orjson_hand(event)
        assert reading == stdlib_json_hand(event)
        assert reading.event_id == orjson_pydantic(event).event_id
        assert reading.event_id == pydantic_json(event).event_id


def main() -> None:
    events = realistic_events(DISTINCT_EVENTS)
    check_agreement(events)
    mean_size = sum(map(len, events)) / len(events)
    results = [(name, ns_per_event(decode, events)) for name, decode in CONTENDERS]
    ours_ns = results[0][1]
    print(f"Decode + validate, {mean_size:.0f}-byte events, best of {RUNS} x {EVENTS_PER_RUN:,}")
    print()
    print("| decoder | ns/event | vs ours |")
    print("|---|---:|---:|")
    for name, ns in results:
        print(f"| {name} | {ns:,.0f} | {ns / ours_ns:.2f}x |")
    print()
    verdict = "meets" if ours_ns <= TARGET_NS else "MISSES"
    print(f"decode_reading: {ours_ns:,.0f} ns/event {verdict} the {TARGET_NS:,} ns target")


if __name__ == "__main__":
    main()
