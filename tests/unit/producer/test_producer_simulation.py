"""The simulated fleet: valid, reproducible readings with complete per-sensor sequences."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import defaultdict

import orjson
import pytest

from sensorstream.producer._simulation import SensorFleet, event_ids, sensor_ids, seq_of
from sensorstream.schema import SensorReading, decode_reading, encode_reading

T0 = 1_700_000_000_000


def _decoded(fleet: SensorFleet, count: int, event_time: int = T0) -> list[SensorReading]:
    readings = []
    for key, value in fleet.generate(count, event_time):
        reading = decode_reading(value)
        assert isinstance(reading, SensorReading), reading
        assert key == reading.sensor_id.encode()
        readings.append(reading)
    return readings


class TestSensorFleetDeterminism:
    def test_same_seed_same_bytes(self) -> None:
        """Two fleets with one seed produce byte-identical batches."""
        first = SensorFleet(50, seed=42, anomaly_probability=0.05)
        second = SensorFleet(50, seed=42, anomaly_probability=0.05)
        assert first.generate(1_000, T0) == second.generate(1_000, T0)
        assert first.generate(500, T0 + 10) == second.generate(500, T0 + 10)

    def test_other_seed_other_readings(self) -> None:
        """A different seed gives different ids and values."""
        first = SensorFleet(5, seed=1).generate(10, T0)
        second = SensorFleet(5, seed=2).generate(10, T0)
        assert first != second

    def test_batching_does_not_change_the_stream(self) -> None:
        """One call of 300 equals three calls of 100 (same event time)."""
        whole = SensorFleet(7, seed=9).generate(300, T0)
        fleet = SensorFleet(7, seed=9)
        parts = fleet.generate(100, T0) + fleet.generate(100, T0) + fleet.generate(100, T0)
        assert whole == parts


class TestSensorFleetSequences:
    def test_seq_starts_at_zero_and_is_complete(self) -> None:
        """Every sensor's seq runs 0, 1, 2, ... without gaps, in order."""
        fleet = SensorFleet(13, seed=3)
        by_sensor: dict[str, list[int]] = defaultdict(list)
        for reading in _decoded(fleet, 1_000) + _decoded(fleet, 301):
            assert reading.seq is not None
            by_sensor[reading.sensor_id].append(reading.seq)
        assert set(sensor_ids(13)) == set(by_sensor)
        for seqs in by_sensor.values():
            assert list(range(len(seqs))) == seqs

    def test_round_robin_shares_evenly(self) -> None:
        """Each sensor gets its share: counts differ by at most one."""
        fleet = SensorFleet(7, seed=3)
        _decoded(fleet, 1_000)
        assert {142, 143} == {fleet.next_seq(i) for i in range(7)}

    def test_event_ids_unique(self) -> None:
        """50,000 readings carry 50,000 distinct version-4 UUIDs."""
        readings = _decoded(SensorFleet(100, seed=0), 50_000)
        ids = {r.event_id for r in readings}
        assert 50_000 == len(ids)
        assert {4} == {uuid.UUID(i).version for i in list(ids)[:100]}

    def test_event_time_is_passed_through(self) -> None:
        """Readings carry the event time given to ``generate``."""
        assert {T0 + 5} == {r.event_time for r in _decoded(SensorFleet(3, seed=1), 9, T0 + 5)}


class TestSensorFleetResume:
    def test_each_sensor_continues_at_its_next_seq(self) -> None:
        """After resume, each sensor's seqs run on from its own next seq, without gaps."""
        fleet = SensorFleet(3, seed=3)
        fleet.resume([5, 0, 9])
        by_sensor: dict[str, list[int]] = defaultdict(list)
        for reading in _decoded(fleet, 9):
            assert reading.seq is not None
            by_sensor[reading.sensor_id].append(reading.seq)
        assert {"sensor-0000": [5, 6, 7], "sensor-0001": [0, 1, 2], "sensor-0002": [9, 10, 11]} == (
            by_sensor
        )
        assert [8, 3, 12] == [fleet.next_seq(i) for i in range(3)]

    def test_a_seeded_fleet_does_not_repeat_the_ids_it_continues(self) -> None:
        """Same seed, resumed: other event ids than the first run's, the same on every resume."""
        first_run = SensorFleet(4, seed=11).generate(8, T0)
        resumed = SensorFleet(4, seed=11)
        resumed.resume([2, 2, 2, 2])
        again = SensorFleet(4, seed=11)
        again.resume([2, 2, 2, 2])
        ids = [orjson.loads(value)["event_id"] for _, value in first_run]
        resumed_batch = resumed.generate(8, T0)
        resumed_ids = [orjson.loads(value)["event_id"] for _, value in resumed_batch]
        assert set() == set(ids) & set(resumed_ids)
        assert resumed_batch == again.generate(8, T0)

    @pytest.mark.parametrize("next_seqs", [[1, 2], [1, 2, 3, 4], [0, -1, 0]])
    def test_bad_next_seqs(self, next_seqs: list[int]) -> None:
        """One next seq per sensor, none negative."""
        with pytest.raises(ValueError, match="next seqs"):
            SensorFleet(3).resume(next_seqs)

    def test_keys_are_the_encoded_sensor_ids(self) -> None:
        """``keys`` are the record keys the readings carry, index = sensor number."""
        fleet = SensorFleet(3, seed=1)
        assert [key for key, _ in fleet.generate(3, T0)] == fleet.keys


class TestSensorFleetSignal:
    def test_values_within_contract_ranges(self) -> None:
        """Even with many anomalies every reading decodes (values in range)."""
        readings = _decoded(SensorFleet(20, seed=5, anomaly_probability=0.5), 20_000)
        assert 20_000 == len(readings)

    def test_signal_drifts_slowly(self) -> None:
        """Without anomalies, consecutive readings of a sensor differ by well under 1 degree."""
        fleet = SensorFleet(1, seed=8)
        temps = [r.temperature for r in _decoded(fleet, 2_000)]
        steps = [abs(b - a) for a, b in itertools.pairwise(temps)]
        assert max(steps) < 1.0
        assert len(set(temps)) > 50

    def test_sensors_have_different_baselines(self) -> None:
        """Sensors are not copies of each other."""
        readings = _decoded(SensorFleet(50, seed=8), 50)
        assert len({round(r.temperature) for r in readings}) > 5

    def test_anomalies_cross_alert_thresholds(self) -> None:
        """At probability 0.2 some readings leave the normal band (> 45 C, < 10 %, ...)."""
        readings = _decoded(SensorFleet(10, seed=4, anomaly_probability=0.2), 5_000)
        spikes = [
            r
            for r in readings
            if r.temperature > 45 or r.temperature < -10 or r.humidity > 90 or r.humidity < 10
        ]
        assert 700 < len(spikes) < 1_300

    def test_no_anomalies_at_zero_probability(self) -> None:
        """With probability 0 every reading stays in the normal band."""
        readings = _decoded(SensorFleet(10, seed=4, anomaly_probability=0.0), 5_000)
        assert all(-10 < r.temperature < 45 and 10 < r.humidity < 90 for r in readings)

    def test_large_fleet(self) -> None:
        """100,000 sensors are cheap to create and each gets its own id."""
        fleet = SensorFleet(100_000, seed=1)
        keys = [key for key, _ in fleet.generate(100_000, T0)]
        assert 100_000 == len(set(keys))
        assert b"sensor-99999" == keys[-1]


class TestHelpers:
    def test_event_ids_all_zero_bits(self) -> None:
        """Zero bytes become the nil UUID with only the version and variant bits set."""
        assert b"00000000-0000-4000-8000-000000000000" == event_ids(bytes(16))

    def test_event_ids_match_the_uuid_module(self) -> None:
        """Each 16 bytes become what ``uuid.UUID(bytes=..., version=4)`` spells."""
        data = random.Random(7).randbytes(16 * 300)
        expected = [
            str(uuid.UUID(bytes=data[k : k + 16], version=4)) for k in range(0, len(data), 16)
        ]
        text = event_ids(data).decode()
        assert expected == [text[k : k + 36] for k in range(0, len(text), 36)]

    @pytest.mark.parametrize("size", [0, 15, 17])
    def test_event_ids_need_whole_ids(self, size: int) -> None:
        """Anything but a positive multiple of 16 bytes is refused or empty."""
        if size == 0:
            assert b"" == event_ids(b"")
        else:
            with pytest.raises(ValueError, match="multiple of 16"):
                event_ids(bytes(size))

    def test_sensor_ids_pad_to_common_width(self) -> None:
        """Ids sort in sensor order: padded to 4 digits, or more for large fleets."""
        assert ["sensor-0000", "sensor-0001"] == sensor_ids(2)
        assert "sensor-12345" == sensor_ids(12_346)[-1]

    def test_same_json_as_the_schema_encoder(self) -> None:
        """Every value parses to exactly what ``encode_reading`` writes for its reading."""
        fleet = SensorFleet(40, seed=6, anomaly_probability=0.3)
        for _, value in fleet.generate(4_000, T0):
            reading = decode_reading(value)
            assert isinstance(reading, SensorReading), reading
            assert orjson.loads(encode_reading(reading)) == orjson.loads(value)

    def test_values_have_two_decimals(self) -> None:
        """Temperatures and humidities are given to 0.01, as floats."""
        for _, value in SensorFleet(10, seed=2, anomaly_probability=0.2).generate(1_000, T0):
            fields = orjson.loads(value)
            for name in ("temperature", "humidity"):
                assert isinstance(fields[name], float)
                assert round(fields[name], 2) == fields[name]

    def test_wire_keys(self) -> None:
        """The JSON has exactly the v1 keys."""
        _, value = SensorFleet(1, seed=1).generate(1, T0)[0]
        expected = ["schema_version", "event_id", "sensor_id", "seq", "event_time",
                    "temperature", "humidity"]  # fmt: skip
        assert expected == list(orjson.loads(value))

    def test_seq_of_reads_the_seq_back(self) -> None:
        """seq_of gives the seq each encoded reading carries."""
        readings = SensorFleet(3, seed=1).generate(3_000, T0)
        assert [orjson.loads(value)["seq"] for _, value in readings] == [
            seq_of(value) for _, value in readings
        ]

    @pytest.mark.parametrize(("sensors", "probability"), [(0, 0.0), (1, 1.5)])
    def test_bad_arguments(self, sensors: int, probability: float) -> None:
        """Nonsense sizes and probabilities are refused."""
        with pytest.raises(ValueError, match="must be"):
            SensorFleet(sensors, anomaly_probability=probability)
