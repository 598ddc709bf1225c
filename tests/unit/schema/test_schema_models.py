"""The wire models are immutable values."""

import dataclasses

import pytest

from sensorstream.schema import SensorReading

READING = SensorReading(
    schema_version=1,
    event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
    sensor_id="sensor-0007",
    seq=41,
    event_time=1_700_000_000_123,
    temperature=22.5,
    humidity=40.1,
)


class TestSensorReading:
    def test_is_frozen(self) -> None:
        """Assigning a field raises, so a reading can be shared between steps safely."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            READING.seq = 42  # type: ignore[misc]

    def test_is_hashable_by_value(self) -> None:
        """Equal readings hash equal: usable in sets for deduplication."""
        assert 1 == len({READING, dataclasses.replace(READING)})

    def test_takes_keyword_arguments_only(self) -> None:
        """Positional construction is refused: seven similar fields are too easy to swap."""
        with pytest.raises(TypeError):
            SensorReading(1, "id", "sensor-0007", 0, 0, 0.0, 0.0)  # type: ignore[call-arg]

    def test_has_no_instance_dict(self) -> None:
        """slots=True: no per-instance __dict__ on the hot path."""
        assert not hasattr(READING, "__dict__")
