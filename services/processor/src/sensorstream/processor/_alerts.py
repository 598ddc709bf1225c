"""Threshold alerts with hysteresis, per sensor and kind.

An alert is raised when a value goes above its high threshold (or below its low
one). It is then *latched*: no further alert of that kind for that sensor until the
value has come back past the threshold by the hysteresis (``high - hysteresis`` or
``low + hysteresis``), so a value hovering at the threshold raises one alert, not a
flood. The first reading of a sensor is compared as if it had been in range before.

Pure: no Kafka, no clock, no logging, no metrics. State is per partition (one
``AlertRules`` per ``PartitionPipeline``), which is per sensor since sensors are keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from sensorstream.schema import Alert, AlertKind, SensorReading

_TEMPERATURE_HIGH: Final = 1
_TEMPERATURE_LOW: Final = 2
_HUMIDITY_HIGH: Final = 4
_HUMIDITY_LOW: Final = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertThresholds:
    """Where alerts fire, and how far back a value must come before one fires again."""

    temperature_high: float = 45.0
    temperature_low: float = -10.0
    humidity_high: float = 90.0
    humidity_low: float = 10.0
    temperature_hysteresis: float = 2.0
    humidity_hysteresis: float = 5.0

    def __post_init__(self) -> None:
        if not self.temperature_low < self.temperature_high:
            raise ValueError(
                f"temperature_low ({self.temperature_low}) must be below "
                f"temperature_high ({self.temperature_high})"
            )
        if not self.humidity_low < self.humidity_high:
            raise ValueError(
                f"humidity_low ({self.humidity_low}) must be below "
                f"humidity_high ({self.humidity_high})"
            )
        if self.temperature_hysteresis < 0 or self.humidity_hysteresis < 0:
            raise ValueError(
                "hysteresis must be >= 0, got "
                f"temperature_hysteresis={self.temperature_hysteresis}, "
                f"humidity_hysteresis={self.humidity_hysteresis}"
            )


class AlertRules:
    """Decides, reading by reading, which alerts to raise."""

    __slots__ = (
        "_h_high",
        "_h_low",
        "_h_rearm_high",
        "_h_rearm_low",
        "_latched",
        "_t_high",
        "_t_low",
        "_t_rearm_high",
        "_t_rearm_low",
        "thresholds",
    )

    def __init__(self, thresholds: AlertThresholds) -> None:
        self.thresholds = thresholds
        self._t_high = thresholds.temperature_high
        self._t_low = thresholds.temperature_low
        self._h_high = thresholds.humidity_high
        self._h_low = thresholds.humidity_low
        self._t_rearm_high = thresholds.temperature_high - thresholds.temperature_hysteresis
        self._t_rearm_low = thresholds.temperature_low + thresholds.temperature_hysteresis
        self._h_rearm_high = thresholds.humidity_high - thresholds.humidity_hysteresis
        self._h_rearm_low = thresholds.humidity_low + thresholds.humidity_hysteresis
        # sensor_id -> bit set of latched kinds; absent means nothing latched.
        self._latched: dict[str, int] = {}

    @property
    def quiet_range(self) -> tuple[float, float, float, float]:
        """(temperature low, high, humidity low, high): inside all four, with nothing
        latched for the sensor, ``evaluate`` returns None. Lets a per-event caller skip
        the call in the usual case (see ``PartitionPipeline.process``)."""
        return self._t_low, self._t_high, self._h_low, self._h_high

    @property
    def latched_sensors(self) -> Mapping[str, int]:
        """Sensors with a latched alert (read-only; the same object for the rules' life)."""
        return self._latched

    def evaluate(self, reading: SensorReading) -> list[Alert] | None:
        """The alerts ``reading`` raises (None, the usual case, if it raises none)."""
        # Hot path: in range and nothing latched costs one dict lookup and four compares.
        temperature = reading.temperature
        humidity = reading.humidity
        if (
            self._t_low <= temperature <= self._t_high
            and self._h_low <= humidity <= self._h_high
            and reading.sensor_id not in self._latched
        ):
            return None
        return self.transition(reading)

    def transition(self, reading: SensorReading) -> list[Alert] | None:
        """Update the latches of one sensor; raise what newly crossed."""
        sensor_id = reading.sensor_id
        before = self._latched.get(sensor_id, 0)
        latched = before
        alerts: list[Alert] | None = None
        temperature = reading.temperature
        humidity = reading.humidity
        for bit, kind, value, crossed, rearmed, threshold in (
            (
                _TEMPERATURE_HIGH,
                "temperature_high",
                temperature,
                temperature > self._t_high,
                temperature <= self._t_rearm_high,
                self._t_high,
            ),
            (
                _TEMPERATURE_LOW,
                "temperature_low",
                temperature,
                temperature < self._t_low,
                temperature >= self._t_rearm_low,
                self._t_low,
            ),
            (
                _HUMIDITY_HIGH,
                "humidity_high",
                humidity,
                humidity > self._h_high,
                humidity <= self._h_rearm_high,
                self._h_high,
            ),
            (
                _HUMIDITY_LOW,
                "humidity_low",
                humidity,
                humidity < self._h_low,
                humidity >= self._h_rearm_low,
                self._h_low,
            ),
        ):
            if latched & bit:
                if rearmed:
                    latched &= ~bit
            elif crossed:
                latched |= bit
                if alerts is None:
                    alerts = []
                alerts.append(_alert(reading, kind, value, threshold))  # type: ignore[arg-type]
        if latched != before:
            if latched:
                self._latched[sensor_id] = latched
            else:
                del self._latched[sensor_id]
        return alerts

    def latched(self, sensor_id: str) -> frozenset[AlertKind]:
        """The kinds currently latched for ``sensor_id`` (for tests and diagnostics)."""
        bits = self._latched.get(sensor_id, 0)
        kinds: list[AlertKind] = []
        if bits & _TEMPERATURE_HIGH:
            kinds.append("temperature_high")
        if bits & _TEMPERATURE_LOW:
            kinds.append("temperature_low")
        if bits & _HUMIDITY_HIGH:
            kinds.append("humidity_high")
        if bits & _HUMIDITY_LOW:
            kinds.append("humidity_low")
        return frozenset(kinds)


def _alert(reading: SensorReading, kind: AlertKind, value: float, threshold: float) -> Alert:
    return Alert(
        sensor_id=reading.sensor_id,
        kind=kind,
        value=value,
        threshold=threshold,
        event_time=reading.event_time,
        event_id=reading.event_id,
    )
