"""The value objects that travel on Sensorstream's topics.

Plain frozen dataclasses: immutable, hashable, cheap, and free of validation, since
validation happens once at the wire boundary (the ``decode_*`` functions). Build
them from values you already trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AlertKind = Literal["temperature_high", "temperature_low", "humidity_high", "humidity_low"]
"""Which threshold an alert crossed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorReading:
    """One measurement from one sensor, as validated by ``decode_reading``."""

    schema_version: int
    """1, or 0 for a legacy v0 event upgraded on decode (so callers can count them)."""
    event_id: str
    """Unique per event: a canonical lowercase UUID (36 chars); the dedup key."""
    sensor_id: str
    """E.g. ``"sensor-0007"``: 1..64 chars of ``[A-Za-z0-9._:-]``; the Kafka key."""
    seq: int | None
    """Per-sensor sequence from 0, +1 per event; ``None`` only for upgraded v0 events."""
    event_time: int
    """When the sensor measured, UTC epoch milliseconds (2000-01-01 .. 2100-01-01)."""
    temperature: float
    """Degrees Celsius, -100.0 .. 200.0."""
    humidity: float
    """Relative humidity in percent, 0.0 .. 100.0."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowAggregate:
    """Statistics of one sensor's readings in one tumbling event-time window."""

    sensor_id: str
    window_start: int
    """Epoch milliseconds, inclusive."""
    window_end: int
    """Epoch milliseconds, exclusive: the window is [window_start, window_end)."""
    count: int
    """Readings in the window, at least 1 (empty windows are not emitted)."""
    temperature_min: float
    temperature_max: float
    temperature_mean: float
    humidity_min: float
    humidity_max: float
    humidity_mean: float
    first_seq: int | None
    """Lowest ``seq`` seen in the window; ``None`` if all readings were upgraded v0 events."""
    last_seq: int | None
    """Highest ``seq`` seen in the window; ``None`` if all readings were upgraded v0 events."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One reading crossed a threshold."""

    sensor_id: str
    kind: AlertKind
    value: float
    """The measured value that crossed the threshold."""
    threshold: float
    event_time: int
    """The reading's event time, UTC epoch milliseconds."""
    event_id: str
    """The reading's event_id, so an alert can be traced back and deduplicated."""
