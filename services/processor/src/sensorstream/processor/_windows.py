"""Per-sensor tumbling windows on event time, for one partition.

A reading with event time ``t`` belongs to the window ``[s, s + size)`` with
``s = t - t % size``. The partition's watermark is the largest event time seen minus
the allowed lateness; a window closes when the watermark reaches its end. A reading
for a window that has already closed is late and is not counted anywhere.

Idle partitions. The watermark only moves with readings, so when a whole partition
goes quiet its last windows would never close. The runtime then calls
:meth:`TumblingWindows.close_all` — only when the *broker* has confirmed, fetch after
fetch, for the idle timeout, that nothing new is there (``_fetching.PartitionFeed``):
a broker that cannot be reached or a leader that is moving is not silence. Closing all
moves the watermark to the end of the newest open window and closes *every* open
window, oldest first, like Flink's idle sources. Afterwards nothing is open, so
``commit_floor()`` is None and the commit moves past everything read: a restart never
replays, rebuilds and re-emits a window that closed idle. A reading that arrives later
for one of those windows is late, as for any window the watermark passed. A single
sensor that goes silent while others on its partition keep sending needs no timeout:
their readings advance the watermark, which closes its window.

All windows of a partition share their boundaries, so open windows are grouped by
end (``dict[end] -> dict[sensor_id] -> window``) and the ends kept in a heap: the
watermark pops only the groups it passes, never scanning every window per event.

This module is pure: no Kafka, no clock, no logging, no metrics. Event times are
checked for sanity (``--max-future-skew``) before they get here.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Final

import orjson

from sensorstream.schema import SensorReading, WindowAggregate

NO_WATERMARK: Final = -(1 << 63)
"""The watermark before the first reading: every window end lies above it."""
_NO_END: Final = 1 << 63
"""``next_end`` while no window is open: no watermark reaches it."""
# The frozen WindowAggregate costs more to build than to encode; closing windows is
# per-event work at 1,000 sensors, so aggregates are encoded straight from the window.
_dumps: Final = orjson.dumps


class SensorWindow:
    """The running statistics of one sensor in one window (mutable, hot)."""

    __slots__ = (
        "count",
        "end",
        "first_offset",
        "first_seq",
        "humidity_max",
        "humidity_min",
        "humidity_sum",
        "last_seq",
        "sensor_id",
        "start",
        "temperature_max",
        "temperature_min",
        "temperature_sum",
    )

    def __init__(self, reading: SensorReading, start: int, end: int, offset: int) -> None:
        temperature = reading.temperature
        humidity = reading.humidity
        self.sensor_id = reading.sensor_id
        self.start = start
        self.end = end
        self.count = 1
        self.temperature_min = temperature
        self.temperature_max = temperature
        self.temperature_sum = temperature
        self.humidity_min = humidity
        self.humidity_max = humidity
        self.humidity_sum = humidity
        self.first_seq: int | None = reading.seq
        self.last_seq: int | None = reading.seq
        self.first_offset = offset
        """The smallest source offset that contributed: replay must start here."""

    def add_seq(self, seq: int) -> None:
        """Widen ``first_seq``..``last_seq`` to include ``seq``."""
        first_seq = self.first_seq
        last_seq = self.last_seq
        if first_seq is None or seq < first_seq:
            self.first_seq = seq
        if last_seq is None or seq > last_seq:
            self.last_seq = seq

    def encode(self) -> bytes:
        """``encode_aggregate(self.to_aggregate())``, without building the value object."""
        count = self.count
        return _dumps(
            {
                "sensor_id": self.sensor_id,
                "window_start": self.start,
                "window_end": self.end,
                "count": count,
                "temperature_min": self.temperature_min,
                "temperature_max": self.temperature_max,
                "temperature_mean": self.temperature_sum / count,
                "humidity_min": self.humidity_min,
                "humidity_max": self.humidity_max,
                "humidity_mean": self.humidity_sum / count,
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
            }
        )

    def to_aggregate(self) -> WindowAggregate:
        """The statistics as the value object written to the aggregates topic."""
        count = self.count
        return WindowAggregate(
            sensor_id=self.sensor_id,
            window_start=self.start,
            window_end=self.end,
            count=count,
            temperature_min=self.temperature_min,
            temperature_max=self.temperature_max,
            temperature_mean=self.temperature_sum / count,
            humidity_min=self.humidity_min,
            humidity_max=self.humidity_max,
            humidity_mean=self.humidity_sum / count,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
        )

    def __repr__(self) -> str:
        return (
            f"SensorWindow(sensor_id={self.sensor_id!r}, start={self.start}, end={self.end}, "
            f"count={self.count}, first_offset={self.first_offset})"
        )


class TumblingWindows:
    """The open windows of every sensor in one partition.

    Owned by one ``PartitionPipeline``; not thread-safe and needs no lock, since a
    partition is processed by exactly one task.
    """

    __slots__ = (
        "_by_end",
        "_ends",
        "_lateness_ms",
        "_open",
        "_size_ms",
        "max_event_time_offset",
        "next_end",
        "watermark",
    )

    def __init__(
        self,
        *,
        size_ms: int,
        allowed_lateness_ms: int,
        watermark: int = NO_WATERMARK,
    ) -> None:
        if size_ms <= 0:
            raise ValueError(f"window size must be a positive number of ms, got {size_ms}")
        if allowed_lateness_ms < 0:
            raise ValueError(f"allowed lateness must be >= 0 ms, got {allowed_lateness_ms}")
        self._size_ms = size_ms
        self._lateness_ms = allowed_lateness_ms
        self._by_end: dict[int, dict[str, SensorWindow]] = {}
        self._ends: list[int] = []
        self._open = 0
        self.watermark: int = watermark
        """Largest event time seen minus the allowed lateness (epoch ms)."""
        self.next_end: int = _NO_END
        """The earliest end among the open window groups."""
        self.max_event_time_offset: int | None = None
        """Source offset of the reading that set the watermark (see ``commit_floor``)."""

    @property
    def open_windows(self) -> int:
        """How many sensor windows are open right now."""
        return self._open

    def add(self, reading: SensorReading, offset: int, closed: list[SensorWindow]) -> bool:
        """Put ``reading`` into its window; False if it is late (its window has closed).

        Windows the advancing watermark closes are appended to ``closed``, oldest first.
        """
        # Hot path: once per valid event; dict lookups and attribute updates, no exceptions.
        event_time = reading.event_time
        size = self._size_ms
        end = event_time - event_time % size + size
        watermark = self.watermark
        if end <= watermark:
            return False
        group = self._by_end.get(end)
        if group is None:
            group = self._by_end[end] = {}
            heapq.heappush(self._ends, end)
            if end < self.next_end:
                self.next_end = end
        sensor_id = reading.sensor_id
        window = group.get(sensor_id)
        if window is not None:
            # Fold the reading in here rather than in a SensorWindow method: on this per-event
            # path a method call costs as much as the update itself.
            window.count += 1
            temperature = reading.temperature
            if temperature < window.temperature_min:
                window.temperature_min = temperature
            elif temperature > window.temperature_max:
                window.temperature_max = temperature
            window.temperature_sum += temperature
            humidity = reading.humidity
            if humidity < window.humidity_min:
                window.humidity_min = humidity
            elif humidity > window.humidity_max:
                window.humidity_max = humidity
            window.humidity_sum += humidity
            seq = reading.seq
            if seq is not None:
                last_seq = window.last_seq
                if last_seq is not None and seq > last_seq:
                    window.last_seq = seq
                else:
                    window.add_seq(seq)
        else:
            group[sensor_id] = SensorWindow(reading, end - size, end, offset)
            self._open += 1
        if event_time - self._lateness_ms > watermark:
            self.watermark = watermark = event_time - self._lateness_ms
            self.max_event_time_offset = offset
            if watermark >= self.next_end:
                self._close_through(watermark, closed)
        return True

    def _close_through(self, watermark: int, closed: list[SensorWindow]) -> None:
        """Close every window group whose end the watermark has reached."""
        ends = self._ends
        by_end = self._by_end
        while ends and ends[0] <= watermark:
            group = by_end.pop(heapq.heappop(ends))
            closed.extend(group.values())
            self._open -= len(group)
        self.next_end = ends[0] if ends else _NO_END

    def close_all(self, closed: list[SensorWindow]) -> None:
        """The partition is idle: close every open window, oldest first (see module doc).

        The watermark moves to the end of the newest open window; it is then no longer
        set by a reading, so a replay need not reach it (``max_event_time_offset`` is
        cleared and stops holding the commit floor back).
        """
        if not self._open:
            return
        watermark = max(self._by_end)
        self.watermark = watermark
        self.max_event_time_offset = None
        self._close_through(watermark, closed)

    def commit_floor(self) -> int | None:
        """The smallest source offset a replay must start from, or None if none is needed.

        That is the first offset of the oldest open window, but never past the reading
        that set the watermark: a replay from here reaches the same watermark, so the
        windows that closed before a restart close again during the replay, where their
        output is suppressed, instead of being emitted a second time. After an idle
        close nothing is open and the answer is None until new windows open.
        """
        if self._open == 0:
            return None
        floor = self.max_event_time_offset
        for group in self._by_end.values():
            # Windows enter a group in offset order, so the first one is the oldest.
            for window in group.values():
                if floor is None or window.first_offset < floor:
                    floor = window.first_offset
                break
        return floor

    def __iter__(self) -> Iterator[SensorWindow]:
        """The open windows, oldest group first (for tests and diagnostics)."""
        for end in sorted(self._by_end):
            yield from self._by_end[end].values()
