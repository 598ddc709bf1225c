"""An example handler: count humid readings per sensor, with a bounded memory.

Run the processor with it::

    sensorstream-processor --handler sensorstream.processor.example_handler:HighHumidityCounter

It shows the habits a handler should have (see ``sensorstream.processor.handler``
for the contract): ``handle`` is cheap and never blocks the event loop, logs only at
DEBUG, keeps bounded state, and is idempotent under redelivery, because it
remembers the last ``seq`` counted per sensor and ignores anything at or below it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import structlog

from sensorstream.schema import SensorReading

from .handler import HandlerContext

DEFAULT_THRESHOLD: Final = 80.0
"""Relative humidity (%) from which a reading counts as humid."""
DEFAULT_MAX_SENSORS: Final = 10_000
"""Sensors tracked at most; the least recently seen one is forgotten first."""

_log = structlog.get_logger(__name__)


class HighHumidityCounter:
    """Counts, per sensor, the readings at or above a humidity threshold."""

    def __init__(
        self, *, threshold: float = DEFAULT_THRESHOLD, max_sensors: int = DEFAULT_MAX_SENSORS
    ) -> None:
        if max_sensors < 1:
            raise ValueError(f"max_sensors must be at least 1, got {max_sensors}")
        self.threshold = threshold
        self.max_sensors = max_sensors
        # sensor_id -> (humid readings counted, last seq counted); LRU order.
        self._sensors: OrderedDict[str, tuple[int, int]] = OrderedDict()

    async def start(self) -> None:
        """Called once before the first reading."""
        _log.debug("humidity_counter_started", threshold=self.threshold)

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        """Count ``reading`` if it is humid and has not been counted before."""
        if reading.humidity < self.threshold:
            return
        sensor_id = reading.sensor_id
        count, last_seq = self._sensors.get(sensor_id, (0, -1))
        seq = reading.seq
        if seq is not None:
            if seq <= last_seq:  # redelivered after a crash: already counted
                return
            last_seq = seq
        self._sensors[sensor_id] = (count + 1, last_seq)
        self._sensors.move_to_end(sensor_id)
        if len(self._sensors) > self.max_sensors:
            self._sensors.popitem(last=False)
        _log.debug(
            "humid_reading_counted",
            sensor_id=sensor_id,
            humidity=reading.humidity,
            partition=context.partition,
            offset=context.offset,
        )

    async def stop(self) -> None:
        """Called once at shutdown: log the busiest sensors."""
        top = sorted(self._sensors.items(), key=lambda item: item[1][0], reverse=True)[:5]
        _log.debug("humidity_counter_stopped", top={sensor: count for sensor, (count, _) in top})

    def count(self, sensor_id: str) -> int:
        """Humid readings counted for ``sensor_id`` (0 if unknown or forgotten)."""
        return self._sensors.get(sensor_id, (0, -1))[0]
