"""The processing steps of one partition: decode -> window -> alert -> route.

``PartitionPipeline.process`` turns a batch of consumed records into a
``BatchResult``: the records to produce (aggregates, alerts, dead letters), the
valid readings for the user's handler, and the counts the runtime turns into
metrics. It is pure and synchronous: it never touches Kafka, the clock, a logger
or a metric, so the runtime owns every side effect and the steps stay testable.

Event-time sanity: a reading stamped further ahead of the processor's clock than
``max_future_skew_ms`` (a device with a wrong clock) is dead-lettered as
``future_event_time`` and never moves the watermark; one bad clock cannot close every
window of its partition. A watermark restored from a commit is held to the same bound
(:meth:`PipelineConfig.trusted_watermark`).

Late readings (their window already closed) go to the DLQ as ``late_event`` with their
lateness, unless the user opted in to dropping them (``drop_late``): then they are
counted (``dropped``), still alerted on and handled, but in no aggregate. So every
consumed record ends in an aggregate, the DLQ, or a counted, opted-in drop.

Replay: records with ``offset < replay_until`` were processed before a restart and
their outputs acknowledged; they only rebuild window and alert state. Nothing they
cause is emitted, including windows that close during the replay (those aggregates
were emitted before the restart). Windows still open when the replay ends are
emitted later, in full, as usual.

Tracing (``PipelineConfig.trace_outputs``, set while tracing is on): the pipeline notes
the trace context each record carried (``_tracing.TraceOrigins``) and gives every
aggregate the context of its window's first reading and every alert that of its
reading, as headers; a dead letter has its record's headers anyway. The worker turns
those into spans. That is data carried along, not a side effect: the pipeline stays pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sensorstream.schema import (
    AGGREGATES_TOPIC,
    ALERTS_TOPIC,
    DLQ_TOPIC,
    TOPOLOGY,
    DeadLetterReason,
    Rejection,
    SensorReading,
    decode_reading,
    encode_alert,
)

from ._alerts import AlertRules, AlertThresholds
from ._dead_letters import DeadLetterWriter, OutputRecord
from ._tracing import TraceOrigins
from ._windows import NO_WATERMARK, SensorWindow, TumblingWindows

__all__ = [
    "AlertThresholds",
    "BatchResult",
    "ConsumedRecord",
    "OutputRecord",
    "PartitionPipeline",
    "PipelineConfig",
]

_MAX_CACHED_KEYS = 100_000
_LATE_MESSAGE = (
    "event_time {event_time} is in window [{start}, {end}), already closed (watermark {watermark})"
)
_FUTURE_MESSAGE = (
    "event_time {event_time} is {ahead} ms ahead of the processor's clock, more than the "
    "{skew} ms --max-future-skew allows (a device clock far off?)"
)
DEFAULT_DLQ_MAX_BYTES = TOPOLOGY.dlq.minimums["max.message.bytes"]


class ConsumedRecord(Protocol):
    """What the pipeline reads from a consumed record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    """How one partition's events are windowed, alerted on and routed."""

    window_size_ms: int = 10_000
    allowed_lateness_ms: int = 5_000
    max_future_skew_ms: int = 300_000
    """How far ahead of the processor's clock an event time may be (see the module doc)."""
    drop_late: bool = False
    """Count late events instead of dead-lettering them (they are always counted)."""
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    instance: str
    """This processor instance, written into every dead letter's headers."""
    aggregates_topic: str = AGGREGATES_TOPIC
    alerts_topic: str = ALERTS_TOPIC
    dlq_topic: str = DLQ_TOPIC
    dlq_max_bytes: int = DEFAULT_DLQ_MAX_BYTES
    """The largest record the DLQ takes; bigger dead letters are cut to fit."""
    trace_outputs: bool = False
    """Carry each output's origin trace context in its headers (tracing on; module doc)."""

    def __post_init__(self) -> None:
        if self.window_size_ms <= 0:
            raise ValueError(f"window_size_ms must be > 0, got {self.window_size_ms}")
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {self.allowed_lateness_ms}")
        if self.max_future_skew_ms < 0:
            raise ValueError(f"max_future_skew_ms must be >= 0, got {self.max_future_skew_ms}")

    def future_limit(self, now: float) -> int:
        """The latest event time (epoch ms) a reading may have at wall time ``now``."""
        return int(now * 1000) + self.max_future_skew_ms

    def trusted_watermark(self, watermark: int, now: float) -> int:
        """``watermark`` restored from a commit, or NO_WATERMARK if no sane reading could
        have set it: beyond ``future_limit(now)`` minus the lateness it came from a clock
        this processor refuses, so the partition starts afresh rather than count every
        reading late."""
        if watermark > self.future_limit(now) - self.allowed_lateness_ms:
            return NO_WATERMARK
        return watermark


@dataclass(slots=True)
class BatchResult:
    """What one call of ``process`` or ``close_idle`` produced and counted."""

    outputs: list[OutputRecord] = field(default_factory=list)
    """To produce, in the order they arose (aggregates, alerts and dead letters interleaved)."""
    valid: list[tuple[Any, SensorReading]] = field(default_factory=list)
    """(record, reading) for the user's handler, in offset order; replayed events excluded.
    Empty when the pipeline was built with ``collect_valid=False`` (no handler)."""
    ok: int = 0
    """Valid events that went into their window (replayed ones not included)."""
    invalid: int = 0
    """Events the decoder refused (all dead-lettered)."""
    late: int = 0
    """Valid events whose window had already closed (dead-lettered, or dropped)."""
    dropped: int = 0
    """Late events dropped on the user's request (``drop_late``): in no aggregate, no DLQ."""
    future: int = 0
    """Valid events stamped too far in the future (dead-lettered)."""
    truncated: int = 0
    """Dead letters whose value was cut to fit the DLQ."""
    replayed: int = 0
    """Events below ``replay_until`` that only rebuilt state."""
    aggregates: int = 0
    alerts_emitted: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters by ``DeadLetterReason`` value."""
    alerts: Counter[str] = field(default_factory=Counter)
    """Alerts by kind."""
    event_time_min: int | None = None
    """The smaller event time of the batch's first and last handled reading (latency
    metrics sample these two; within a partition events are nearly in time order)."""
    event_time_max: int | None = None
    """The larger of those two event times."""
    origins: Sequence[list[tuple[str, bytes]]] = ()
    """The distinct trace contexts (as headers) the batch's records carried, in order (for
    ``close_idle``: those its aggregates continue); always empty unless ``trace_outputs``."""


class PartitionPipeline:
    """One per assigned partition; owned by exactly one PartitionWorker task."""

    def __init__(
        self,
        topic: str,
        partition: int,
        config: PipelineConfig,
        *,
        replay_until: int = -1,
        watermark: int = NO_WATERMARK,
        collect_valid: bool = True,
    ) -> None:
        self.topic = topic
        self.collect_valid = collect_valid
        """Fill ``BatchResult.valid`` for a handler; without one, skip the per-event pair."""
        self.partition = partition
        self.config = config
        self.replay_until = replay_until
        """Records with a smaller offset only rebuild state (see the module docstring)."""
        self._windows = TumblingWindows(
            size_ms=config.window_size_ms,
            allowed_lateness_ms=config.allowed_lateness_ms,
            # The watermark of the last commit: windows it had closed (by event time or
            # by an idle close) stay closed during and after the replay.
            watermark=watermark,
        )
        self._alerts = AlertRules(config.thresholds)
        self._sensor_keys: dict[str, bytes] = {}
        self.dead_letters = DeadLetterWriter(
            topic=config.dlq_topic, instance=config.instance, max_bytes=config.dlq_max_bytes
        )
        self.origins = TraceOrigins() if config.trace_outputs else None
        """Each offset's trace context, while tracing is on (see the module doc)."""

    @property
    def open_windows(self) -> int:
        """How many sensor windows are open (a gauge for the runtime)."""
        return self._windows.open_windows

    @property
    def watermark(self) -> int:
        """The partition's event-time watermark, epoch ms (very negative before any event)."""
        return self._windows.watermark

    def commit_floor(self) -> int | None:
        """Smallest source offset an open window still needs, or None."""
        return self._windows.commit_floor()

    def process(self, records: Sequence[Any], now: float) -> BatchResult:
        """Decode, window, alert and route ``records`` (in offset order) at wall time ``now``."""
        # Hot path: once per event; locals only, no logging, no exceptions for control flow.
        result = BatchResult()
        origins = self.origins
        if origins is not None:
            result.origins = origins.note(records)
        append_valid = result.valid.append if self.collect_valid else None
        closed: list[SensorWindow] = []
        add_to_window = self._windows.add
        rules = self._alerts
        evaluate = rules.evaluate
        transition = rules.transition
        t_low, t_high, h_low, h_high = rules.quiet_range
        latched = rules.latched_sensors
        replay_until = self.replay_until
        config = self.config
        drop_late = config.drop_late
        future_limit = config.future_limit(now)
        ok = late = replayed = 0
        first: SensorReading | None = None
        last: SensorReading | None = None
        for record in records:
            reading = decode_reading(record.value)
            offset = record.offset
            if isinstance(reading, Rejection):
                if offset < replay_until:
                    replayed += 1
                else:
                    self._reject(record, reading, result)
                continue
            if reading.event_time > future_limit:
                if offset < replay_until:
                    replayed += 1
                else:
                    self._dead_letter_future(record, reading, now, result)
                continue
            if offset < replay_until:
                replayed += 1
                add_to_window(reading, offset, closed)
                evaluate(reading)
                closed.clear()  # emitted before the restart
                continue
            if add_to_window(reading, offset, closed):
                ok += 1
                if closed:
                    self._emit_aggregates(closed, result)
            else:
                late += 1
                if not drop_late:
                    self._dead_letter_late(record, reading, result)
                    continue
                result.dropped += 1
            # AlertRules.evaluate, with its usual "nothing to say" case inlined.
            if (
                not (t_low <= reading.temperature <= t_high and h_low <= reading.humidity <= h_high)
                or reading.sensor_id in latched
            ):
                alerts = transition(reading)
                if alerts is not None:
                    self._emit_alerts(alerts, result, offset)
            if append_valid is not None:
                append_valid((record, reading))
            if first is None:
                first = reading
            last = reading
        result.ok = ok
        result.late = late
        result.replayed = replayed
        if origins is not None and records:
            floor = self._windows.commit_floor()
            origins.forget_before(records[-1].offset + 1 if floor is None else floor)
        if first is not None and last is not None:
            result.event_time_min = min(first.event_time, last.event_time)
            result.event_time_max = max(first.event_time, last.event_time)
        return result

    def close_idle(self) -> BatchResult:
        """The partition is idle: close and emit every open window.

        The runtime calls this only once the broker has confirmed for the idle timeout
        that the partition has nothing new and its worker is caught up, so neither a
        backlog nor an unreachable broker is mistaken for silence (see ``_windows``).
        """
        result = BatchResult()
        closed: list[SensorWindow] = []
        self._windows.close_all(closed)
        if closed:
            self._emit_aggregates(closed, result)
            if self.origins is not None:
                # No records here: the contexts are those the aggregates continue.
                distinct = {tuple(out.headers): out.headers for out in result.outputs}
                result.origins = [headers for headers in distinct.values() if headers]
        return result

    def _sensor_key(self, sensor_id: str) -> bytes:
        """The output key for ``sensor_id``, encoded once per sensor."""
        keys = self._sensor_keys
        key = keys.get(sensor_id)
        if key is None:
            if len(keys) >= _MAX_CACHED_KEYS:  # a flood of new ids must not grow memory
                keys.clear()
            key = keys[sensor_id] = sensor_id.encode()
        return key

    def _emit_aggregates(self, closed: list[SensorWindow], result: BatchResult) -> None:
        topic = self.config.aggregates_topic
        append = result.outputs.append
        origins = self.origins
        for window in closed:
            append(
                OutputRecord(
                    topic,
                    self._sensor_key(window.sensor_id),
                    window.encode(),
                    [] if origins is None else origins.at(window.first_offset),
                )
            )
        result.aggregates += len(closed)
        closed.clear()

    def _emit_alerts(self, alerts: list[Any], result: BatchResult, offset: int) -> None:
        """The alerts of the reading at ``offset``."""
        topic = self.config.alerts_topic
        origins = self.origins
        for alert in alerts:
            headers = [] if origins is None else origins.at(offset)
            result.outputs.append(
                OutputRecord(topic, self._sensor_key(alert.sensor_id), encode_alert(alert), headers)
            )
            result.alerts[alert.kind] += 1
        result.alerts_emitted += len(alerts)

    def _reject(self, record: Any, rejection: Rejection, result: BatchResult) -> None:
        result.invalid += 1
        self._dead_letter(record, DeadLetterReason(rejection.reason), rejection.message, result)

    def _dead_letter_late(self, record: Any, reading: SensorReading, result: BatchResult) -> None:
        size = self.config.window_size_ms
        start = reading.event_time - reading.event_time % size
        watermark = self._windows.watermark
        error = _LATE_MESSAGE.format(
            event_time=reading.event_time, start=start, end=start + size, watermark=watermark
        )
        # How far behind the newest event time of its partition the reading is.
        lateness = watermark + self.config.allowed_lateness_ms - reading.event_time
        self._dead_letter(record, DeadLetterReason.LATE_EVENT, error, result, lateness=lateness)

    def _dead_letter_future(
        self, record: Any, reading: SensorReading, now: float, result: BatchResult
    ) -> None:
        result.future += 1
        error = _FUTURE_MESSAGE.format(
            event_time=reading.event_time,
            ahead=reading.event_time - int(now * 1000),
            skew=self.config.max_future_skew_ms,
        )
        self._dead_letter(record, DeadLetterReason.FUTURE_EVENT_TIME, error, result)

    def _dead_letter(
        self,
        record: Any,
        reason: DeadLetterReason,
        error: str,
        result: BatchResult,
        *,
        lateness: int | None = None,
    ) -> None:
        letter = self.dead_letters.letter(record, reason, error, lateness_ms=lateness)
        result.outputs.append(letter)
        result.dead_letters[reason.value] += 1
        if letter.truncated:
            result.truncated += 1
