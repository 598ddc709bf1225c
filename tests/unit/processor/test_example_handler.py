"""The shipped example handler counts humid readings, idempotently and in bounded memory."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from sensorstream.processor.example_handler import HighHumidityCounter
from sensorstream.processor.handler import HandlerContext
from sensorstream.schema import SensorReading


def reading(
    humidity: float, *, seq: int | None = 0, sensor_id: str = "sensor-0001"
) -> SensorReading:
    return SensorReading(
        schema_version=1,
        event_id="00000000-0000-4000-8000-000000000000",
        sensor_id=sensor_id,
        seq=seq,
        event_time=1_700_000_000_000,
        temperature=20.0,
        humidity=humidity,
    )


CONTEXT = HandlerContext(
    topic="sensor-data", partition=2, offset=9, timestamp=0, key=None, headers=(), instance="t"
)


def feed(handler: HighHumidityCounter, *readings: SensorReading) -> None:
    async def run() -> None:
        for r in readings:
            await handler.handle(r, CONTEXT)

    asyncio.run(run())


class TestHighHumidityCounter:
    def test_counts_only_humid_readings(self) -> None:
        """Readings at or above the threshold count; drier ones do not."""
        counter = HighHumidityCounter(threshold=80.0)

        feed(counter, reading(79.9, seq=0), reading(80.0, seq=1), reading(95.0, seq=2))

        assert 2 == counter.count("sensor-0001")

    def test_redelivered_readings_count_once(self) -> None:
        """At-least-once redelivery (same seq again) does not double count."""
        counter = HighHumidityCounter()

        feed(counter, reading(90.0, seq=5), reading(90.0, seq=6), reading(90.0, seq=5))

        assert 2 == counter.count("sensor-0001")

    def test_forgets_the_least_recently_seen_sensor(self) -> None:
        """At most max_sensors are tracked."""
        counter = HighHumidityCounter(max_sensors=2)

        feed(counter, *(reading(90.0, sensor_id=s, seq=i) for i, s in enumerate("abac")))

        assert (2, 0, 1) == (counter.count("a"), counter.count("b"), counter.count("c"))

    def test_logs_at_debug_with_partition_and_offset(self) -> None:
        """Each counted reading is a DEBUG event, never INFO."""
        counter = HighHumidityCounter()

        with capture_logs() as logs:
            feed(counter, reading(99.0))

        assert [("humid_reading_counted", "debug", 2, 9)] == [
            (log["event"], log["log_level"], log["partition"], log["offset"]) for log in logs
        ]

    def test_rejects_zero_capacity(self) -> None:
        """max_sensors must be at least 1."""
        with pytest.raises(ValueError, match="max_sensors"):
            HighHumidityCounter(max_sensors=0)
