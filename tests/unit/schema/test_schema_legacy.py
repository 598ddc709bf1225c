"""Legacy v0 payloads (the kafka-python tutorial format) are upgraded to v1 readings."""

import uuid

import orjson
import pytest

from sensorstream.schema import (
    LEGACY_EVENT_ID_NAMESPACE,
    Rejection,
    RejectReason,
    SensorReading,
    decode_reading,
)
from sensorstream.schema._legacy import legacy_event_id, legacy_sensor_id

TUTORIAL = b'{"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}'


def legacy(**overrides: object) -> bytes:
    fields = {"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1_700_000_000}
    return orjson.dumps({**fields, **overrides})


class TestUpgradeLegacy:
    def test_upgrades_the_tutorial_payload(self) -> None:
        """The classic payload becomes a full reading, reporting schema_version 0."""
        assert SensorReading(
            schema_version=0,
            event_id=legacy_event_id(TUTORIAL),
            sensor_id="sensor-0007",
            seq=None,
            event_time=1_700_000_000_000,
            temperature=22.5,
            humidity=40.1,
        ) == decode_reading(TUTORIAL)

    def test_replay_yields_the_same_event_id(self) -> None:
        """The id depends only on the bytes, so a replayed event deduplicates."""
        assert decode_reading(TUTORIAL) == decode_reading(bytes(TUTORIAL))

    def test_different_payloads_get_different_ids(self) -> None:
        """Two events from one sensor are not merged."""
        first = decode_reading(legacy(timestamp=1_700_000_000))
        second = decode_reading(legacy(timestamp=1_700_000_001))

        assert isinstance(first, SensorReading)
        assert isinstance(second, SensorReading)
        assert first.event_id != second.event_id

    @pytest.mark.parametrize(
        ("number", "expected"),
        [(0, "sensor-0000"), (7, "sensor-0007"), (1234, "sensor-1234"), (123456, "sensor-123456")],
    )
    def test_sensor_ids_are_zero_padded_to_four_digits(self, number: int, expected: str) -> None:
        """7 -> sensor-0007; longer numbers keep all their digits."""
        assert expected == legacy_sensor_id(number)

    def test_integer_readings_become_floats(self) -> None:
        """Whole-number temperatures from old firmware read as floats."""
        result = decode_reading(legacy(temperature=22, humidity=40))

        assert isinstance(result, SensorReading)
        assert (22.0, 40.0) == (result.temperature, result.humidity)
        assert (float, float) == (type(result.temperature), type(result.humidity))

    @pytest.mark.parametrize(
        ("overrides", "reason"),
        [
            ({"sensor_id": "7"}, RejectReason.WRONG_TYPE),
            ({"sensor_id": True}, RejectReason.WRONG_TYPE),
            ({"sensor_id": -1}, RejectReason.OUT_OF_RANGE),
            ({"timestamp": 1_700_000_000.5}, RejectReason.WRONG_TYPE),
            ({"timestamp": 1_700_000_000_000}, RejectReason.OUT_OF_RANGE),  # ms, not seconds
            ({"temperature": 900}, RejectReason.OUT_OF_RANGE),
            ({"humidity": None}, RejectReason.WRONG_TYPE),
        ],
    )
    def test_invalid_v0_payloads_are_rejected(
        self, overrides: dict[str, object], reason: RejectReason
    ) -> None:
        """v0 fields are validated with the same ranges as v1."""
        result = decode_reading(legacy(**overrides))

        assert isinstance(result, Rejection)
        assert reason == result.reason

    def test_explicit_schema_version_zero_is_not_legacy(self) -> None:
        """v0 never had the field: schema_version 0 on the wire is an unknown version."""
        result = decode_reading(legacy(schema_version=0))

        assert isinstance(result, Rejection)
        assert RejectReason.UNKNOWN_VERSION == result.reason


class TestLegacyEventId:
    def test_is_uuid5_of_the_raw_bytes(self) -> None:
        """The same value uuid.uuid5 gives for the payload text."""
        expected = str(uuid.uuid5(LEGACY_EVENT_ID_NAMESPACE, TUTORIAL.decode()))

        assert expected == legacy_event_id(TUTORIAL)
