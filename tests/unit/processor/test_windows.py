"""Per-sensor tumbling windows on event time: assignment, closing, lateness, commit floor."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstream.processor._windows import NO_WATERMARK, SensorWindow, TumblingWindows
from sensorstream.schema import SensorReading, WindowAggregate, encode_aggregate

T0 = 1_700_000_000_000
"""A window boundary for 10 s windows (divisible by 10,000 ms)."""


def reading(
    event_time: int,
    *,
    sensor_id: str = "sensor-0001",
    seq: int | None = 0,
    temperature: float = 20.0,
    humidity: float = 50.0,
) -> SensorReading:
    return SensorReading(
        schema_version=1,
        event_id="00000000-0000-4000-8000-000000000000",
        sensor_id=sensor_id,
        seq=seq,
        event_time=event_time,
        temperature=temperature,
        humidity=humidity,
    )


def windows(size_ms: int = 10_000, lateness_ms: int = 5_000) -> TumblingWindows:
    return TumblingWindows(size_ms=size_ms, allowed_lateness_ms=lateness_ms)


class TestAssignment:
    def test_readings_of_one_window_share_it(self) -> None:
        """[s, s + size) collects every reading of one sensor with event time in it."""
        w = windows()
        closed: list[SensorWindow] = []

        for offset, event_time in enumerate((T0, T0 + 4_000, T0 + 9_999)):
            w.add(reading(event_time, seq=offset), offset, closed)

        assert [(T0, T0 + 10_000, 3)] == [(x.start, x.end, x.count) for x in w]

    def test_window_end_is_exclusive(self) -> None:
        """A reading at exactly s + size opens the next window."""
        w = windows()

        w.add(reading(T0 + 9_999), 0, [])
        w.add(reading(T0 + 10_000), 1, [])

        assert [T0, T0 + 10_000] == [x.start for x in w]

    def test_each_sensor_has_its_own_window(self) -> None:
        """Two sensors in the same time range get two windows."""
        w = windows()

        w.add(reading(T0, sensor_id="sensor-a"), 0, [])
        w.add(reading(T0, sensor_id="sensor-b"), 1, [])

        assert ["sensor-a", "sensor-b"] == [x.sensor_id for x in w]
        assert 2 == w.open_windows


class TestStatistics:
    def test_min_max_mean_and_seq_range(self) -> None:
        """The aggregate carries min/max/mean of both measures and the seq range."""
        w = windows()
        closed: list[SensorWindow] = []
        for seq, (temperature, humidity) in enumerate([(20.0, 40.0), (26.0, 30.0), (23.0, 50.0)]):
            w.add(
                reading(T0 + seq, seq=seq + 7, temperature=temperature, humidity=humidity),
                seq,
                closed,
            )

        w.add(reading(T0 + 15_000, seq=10), 3, closed)

        assert [
            WindowAggregate(
                sensor_id="sensor-0001",
                window_start=T0,
                window_end=T0 + 10_000,
                count=3,
                temperature_min=20.0,
                temperature_max=26.0,
                temperature_mean=23.0,
                humidity_min=30.0,
                humidity_max=50.0,
                humidity_mean=40.0,
                first_seq=7,
                last_seq=9,
            )
        ] == [x.to_aggregate() for x in closed]

    def test_seq_range_survives_reordering(self) -> None:
        """first_seq/last_seq are the lowest/highest seq, whatever the arrival order."""
        w = windows()
        for offset, seq in enumerate((5, 3, 8, 4)):
            w.add(reading(T0 + offset, seq=seq), offset, [])

        (window,) = w

        assert (3, 8) == (window.first_seq, window.last_seq)

    def test_upgraded_readings_without_seq(self) -> None:
        """Readings without seq (upgraded v0) leave the seq range None."""
        w = windows()
        w.add(reading(T0, seq=None), 0, [])
        w.add(reading(T0 + 1, seq=None), 1, [])

        (window,) = w

        assert (None, None, 2) == (window.first_seq, window.last_seq, window.count)

    def test_encode_matches_encode_aggregate(self) -> None:
        """The fast encoder writes exactly what encode_aggregate writes."""
        w = windows()
        w.add(reading(T0, seq=None, temperature=-3.5), 0, [])
        w.add(reading(T0 + 1, seq=4, humidity=99.5), 1, [])
        (window,) = w

        assert encode_aggregate(window.to_aggregate()) == window.encode()
        assert 4 == orjson.loads(window.encode())["first_seq"]


class TestWatermark:
    def test_closes_when_watermark_reaches_end(self) -> None:
        """With 5 s lateness, [T0, T0+10s) closes when an event at T0+15s arrives."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0), 0, closed)

        w.add(reading(T0 + 14_999, sensor_id="sensor-x"), 1, closed)
        still_open = list(closed)
        w.add(reading(T0 + 15_000, sensor_id="sensor-x"), 2, closed)

        assert [] == still_open
        assert [(T0, "sensor-0001")] == [(x.start, x.sensor_id) for x in closed]

    def test_any_sensor_advances_the_partition_watermark(self) -> None:
        """The watermark is per partition: one busy sensor closes a quiet sensor's window."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0, sensor_id="quiet"), 0, closed)

        w.add(reading(T0 + 20_000, sensor_id="busy"), 1, closed)

        assert ["quiet"] == [x.sensor_id for x in closed]
        assert T0 + 15_000 == w.watermark

    def test_closes_oldest_first(self) -> None:
        """A jump in event time closes every passed window, oldest group first."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0 + 10_000, sensor_id="b"), 0, closed)
        w.add(reading(T0 + 1, sensor_id="a"), 1, closed)

        w.add(reading(T0 + 60_000, sensor_id="c"), 2, closed)

        assert [(T0, "a"), (T0 + 10_000, "b")] == [(x.start, x.sensor_id) for x in closed]
        assert 1 == w.open_windows

    def test_zero_lateness_closes_at_the_boundary(self) -> None:
        """Without allowed lateness a window closes on the first event at its end."""
        w = windows(lateness_ms=0)
        closed: list[SensorWindow] = []
        w.add(reading(T0), 0, closed)

        w.add(reading(T0 + 10_000), 1, closed)

        assert [T0] == [x.start for x in closed]


class TestLateness:
    def test_event_exactly_allowed_lateness_behind_is_accepted(self) -> None:
        """An event allowed_lateness behind the newest one still counts."""
        w = windows()
        w.add(reading(T0 + 14_999), 0, [])

        accepted = w.add(reading(T0 + 9_999, sensor_id="other"), 1, [])

        assert accepted is True
        assert 2 == w.open_windows

    def test_event_for_a_closed_window_is_late(self) -> None:
        """Once the watermark passed a window's end, its events are late and not counted."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0), 0, closed)
        w.add(reading(T0 + 15_000), 1, closed)

        accepted = w.add(reading(T0 + 9_999), 2, closed)

        assert accepted is False
        assert [1] == [x.count for x in closed]

    def test_late_event_opens_no_window(self) -> None:
        """A late event for a sensor with no window leaves nothing open."""
        w = windows()
        w.add(reading(T0 + 30_000, sensor_id="a"), 0, [])

        accepted = w.add(reading(T0, sensor_id="b"), 1, [])

        assert (False, ["a"]) == (accepted, [x.sensor_id for x in w])

    def test_late_event_does_not_move_the_watermark(self) -> None:
        """Only the largest event time seen sets the watermark."""
        w = windows()
        w.add(reading(T0 + 30_000), 0, [])

        w.add(reading(T0), 1, [])

        assert T0 + 25_000 == w.watermark


class TestIdleClose:
    def test_closing_nothing_open_changes_nothing(self) -> None:
        """close_all on a partition without open windows leaves the watermark alone."""
        w = windows()
        closed: list[SensorWindow] = []

        w.close_all(closed)

        assert ([], NO_WATERMARK) == (closed, w.watermark)

    def test_idle_partition_closes_every_open_window(self) -> None:
        """An idle partition closes all its open windows, oldest first."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0 + 12_000, sensor_id="a"), 0, closed)
        w.add(reading(T0 + 9_000, sensor_id="b"), 1, closed)
        w.add(reading(T0 + 12_500, sensor_id="b"), 2, closed)

        w.close_all(closed)

        assert [("b", T0), ("a", T0 + 10_000), ("b", T0 + 10_000)] == [
            (x.sensor_id, x.start) for x in closed
        ]
        assert (0, None) == (w.open_windows, w.commit_floor())

    def test_event_for_an_idle_closed_window_is_late(self) -> None:
        """After an idle close, a straggler for any closed window is late, not a new window."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0, sensor_id="a"), 0, closed)
        w.close_all(closed)

        accepted = w.add(reading(T0 + 1, sensor_id="b"), 1, closed)

        assert (False, 0, T0 + 10_000) == (accepted, w.open_windows, w.watermark)

    def test_watermark_does_not_close_an_idle_closed_window_again(self) -> None:
        """A window emitted by the idle timeout is not emitted a second time."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0), 0, closed)
        w.close_all(closed)

        w.add(reading(T0 + 60_000), 1, closed)

        assert [T0] == [x.start for x in closed]

    def test_later_windows_open_after_an_idle_close(self) -> None:
        """A partition that wakes up windows its new readings as usual."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0), 0, closed)
        w.close_all(closed)

        accepted = w.add(reading(T0 + 10_000), 1, closed)

        assert (True, 1, 1) == (accepted, w.open_windows, w.commit_floor())


class TestCommitFloor:
    def test_none_without_open_windows(self) -> None:
        """Nothing open, nothing to replay."""
        assert windows().commit_floor() is None

    def test_first_offset_of_the_oldest_open_window(self) -> None:
        """The floor is the smallest offset that contributed to an open window."""
        w = windows()
        w.add(reading(T0, sensor_id="a"), 10, [])
        w.add(reading(T0, sensor_id="b"), 11, [])
        w.add(reading(T0 + 1, sensor_id="a"), 12, [])

        assert 10 == w.commit_floor()

    def test_moves_as_windows_close(self) -> None:
        """When the oldest windows close, the floor moves up to the next open one."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0, sensor_id="a"), 10, closed)
        w.add(reading(T0 + 10_000, sensor_id="b"), 11, closed)
        before = w.commit_floor()

        w.add(reading(T0 + 15_000, sensor_id="b"), 12, closed)

        assert (10, 11) == (before, w.commit_floor())

    def test_idle_close_releases_the_floor(self) -> None:
        """After an idle close the floor is None, even though a reading set the watermark."""
        w = windows()
        closed: list[SensorWindow] = []
        w.add(reading(T0 + 9_000, sensor_id="a"), 10, closed)  # sets the watermark
        w.add(reading(T0 + 1_000, sensor_id="b"), 11, closed)
        before = w.commit_floor()

        w.close_all(closed)

        assert (10, None) == (before, w.commit_floor())


class TestManySensors:
    def test_thousand_sensors_one_aggregate_each_per_window(self) -> None:
        """1,000 sensors x 3 windows: every window closes once, with all its readings."""
        w = windows()
        closed: list[SensorWindow] = []
        offset = 0
        for second in range(40):
            for sensor in range(1_000):
                w.add(
                    reading(T0 + second * 1_000, sensor_id=f"sensor-{sensor:04d}", seq=second),
                    offset,
                    closed,
                )
                offset += 1

        assert 3_000 == len(closed)
        assert {10} == {x.count for x in closed}
        assert [T0, T0 + 10_000, T0 + 20_000] == sorted({x.start for x in closed})
        assert (1_000, 30_000) == (w.open_windows, w.commit_floor())


class TestNothingLost:
    @given(
        steps=st.lists(st.integers(0, 3_000), min_size=1, max_size=200),
        jitter=st.lists(st.integers(0, 5_000), min_size=200, max_size=200),
        sensors=st.lists(st.sampled_from(["a", "b", "c"]), min_size=200, max_size=200),
    )
    def test_disorder_within_lateness_loses_no_reading(
        self, steps: list[int], jitter: list[int], sensors: list[str]
    ) -> None:
        """Readings at most allowed_lateness out of order all land in exactly one aggregate."""
        w = windows()
        closed: list[SensorWindow] = []
        clock = T0
        accepted = []
        for offset, step in enumerate(steps):
            clock += step
            event_time = max(T0, clock - jitter[offset])
            accepted.append(w.add(reading(event_time, sensor_id=sensors[offset]), offset, closed))
        w.add(reading(clock + 1_000_000, sensor_id="flush"), len(steps), closed)

        assert all(accepted)
        assert len(steps) == sum(x.count for x in closed)
        assert len(closed) == len({(x.sensor_id, x.start) for x in closed})


class TestValidation:
    @pytest.mark.parametrize(("size_ms", "lateness_ms"), [(0, 0), (-10, 0), (10, -1)])
    def test_rejects_nonsense(self, size_ms: int, lateness_ms: int) -> None:
        """Size must be positive, lateness not negative."""
        with pytest.raises(ValueError, match="must be"):
            windows(size_ms, lateness_ms)
