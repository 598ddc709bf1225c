"""The report of readings never acknowledged: per sensor, compact, capped, exact."""

from __future__ import annotations

from sensorstream.producer._simulation import SensorFleet
from sensorstream.producer._unacknowledged import UnacknowledgedReadings, seq_ranges


class TestSeqRanges:
    def test_runs_become_ranges(self) -> None:
        """Consecutive seqs collapse to first-last; lone ones stay single; order is sorted."""
        assert "3-5,9,11-12" == seq_ranges([12, 3, 4, 5, 9, 11])

    def test_empty(self) -> None:
        """No seqs, no ranges."""
        assert "" == seq_ranges([])


class TestUnacknowledgedReadings:
    def test_a_suffix_per_sensor(self) -> None:
        """The last readings of each sensor show as one range ending at its last seq."""
        fleet = SensorFleet(3, seed=1)
        readings = fleet.generate(30, 0)
        report = UnacknowledgedReadings.of(readings[22:])
        expected = {"sensor-0000": "8-9", "sensor-0001": "7-9", "sensor-0002": "7-9"}
        assert (8, 3, expected) == (report.count, report.sensors, report.seqs)

    def test_gaps_are_exact(self) -> None:
        """Readings missing from the middle show as separate ranges."""
        readings = SensorFleet(1, seed=1).generate(10, 0)
        report = UnacknowledgedReadings.of(readings[2:4] + readings[7:])
        assert {"sensor-0000": "2-3,7-9"} == report.seqs

    def test_listed_sensors_are_capped(self) -> None:
        """Only the first ``listed`` sensors by id are spelled out; all are counted."""
        readings = SensorFleet(50, seed=1).generate(100, 0)
        report = UnacknowledgedReadings.of(reversed(readings), listed=3)
        assert (100, 50) == (report.count, report.sensors)
        assert {"sensor-0000": "0-1", "sensor-0001": "0-1", "sensor-0002": "0-1"} == report.seqs
        assert "from 50 sensors (their seqs in unacknowledged_seqs, the first 3 listed)" == (
            report.describe()
        )

    def test_log_fields(self) -> None:
        """The final log line gets the sensor count and the listed seqs."""
        report = UnacknowledgedReadings.of(SensorFleet(2, seed=1).generate(2, 0))
        assert {
            "unacknowledged_sensors": 2,
            "unacknowledged_seqs": {"sensor-0000": "0", "sensor-0001": "0"},
        } == report.log_fields()
        assert "from 2 sensors (their seqs in unacknowledged_seqs)" == report.describe()
