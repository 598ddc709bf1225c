"""The accounting: where each reading of the input topic ended up.

Pure and synchronous: :class:`Ledger` is fed records (input first, then dead letters,
then aggregates, as :mod:`._reading` does) and answers with an :class:`AuditReport`.
It never talks to Kafka, so it is unit-tested with plain values.

How a reading is identified:
- a valid reading by ``(sensor_id, seq)``, the key every aggregate and dead letter of
  it carries (an aggregate as its ``first_seq..last_seq`` range);
- a record the processor cannot decode by where it sits, ``(partition, offset)``: its
  dead letter names that spot in its headers.

Memory per sensor is a handful of integers, whatever the hours of data: each set of
seqs is a :class:`SeqRanges` (one range while nothing is wrong), and of the windows
only the newest ``window_memory`` digests are kept, to tell an identical re-emission
(at-least-once replay) from a window counted twice. Undecodable records are kept by
position, so they cost memory in proportion to how many there are (they are rare).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any, Final

from sensorstream.schema import (
    DeadLetterHeaders,
    PoisonEventError,
    SensorReading,
    decode_aggregate,
    decode_reading,
)

from ._intervals import SeqRanges

__all__ = ["DEFAULT_WINDOW_MEMORY", "AuditReport", "AuditTotals", "Ledger", "SensorReport"]

DEFAULT_WINDOW_MEMORY: Final = 64
"""Windows remembered per sensor to recognise an identical re-emission: a replay after
commits stalled for a minute re-emits about a minute of windows (1 KiB per sensor)."""

_SHOWN_RANGES: Final = 5
"""Per problem, the first seq ranges named in a sensor's report."""


class _Sensor:
    """What the audit knows of one sensor. Kept small: there may be a million."""

    __slots__ = (
        "conflicting",
        "covered",
        "dead",
        "dead_reasons",
        "duplicated",
        "input_duplicates",
        "inputs",
        "overcounted",
        "partial",
        "pending",
        "recent",
        "reemitted",
        "reordered",
        "settled",
        "shortfall",
        "top",
    )

    def __init__(self) -> None:
        self.inputs = SeqRanges()
        self.covered = SeqRanges()
        self.dead = SeqRanges()
        self.top = -1
        """The highest input seq so far, in offset order (to see reordering)."""
        self.settled = -1
        """``--follow``: the highest seq old enough to count as missing if unaccounted."""
        self.pending = -1
        """``--follow``: ``top`` at the previous :meth:`Ledger.settle`."""
        self.reordered = 0
        self.input_duplicates = 0
        self.duplicated = 0
        self.shortfall = 0
        self.partial = 0
        self.overcounted = 0
        self.reemitted = 0
        self.conflicting = 0
        self.dead_reasons: Counter[str] | None = None
        self.recent: array[int] | None = None
        """Flat ``window_start, digest`` pairs of the newest windows, oldest first."""


@dataclass(frozen=True)
class AuditTotals:
    """The whole run in numbers. Readings are counted once each, whatever their fate."""

    sensors: int = 0
    produced: int = 0
    """Valid readings with a seq in the input topic (each seq once)."""
    aggregated: int = 0
    """Of those, how many some aggregate covers."""
    dead_lettered: int = 0
    """Readings in the DLQ: valid ones by seq plus undecodable records by position."""
    missing: int = 0
    """In the input, but in no aggregate and not in the DLQ (plus the readings a partial
    window left out)."""
    duplicated: int = 0
    """Counted twice: a seq in two different aggregates, in an aggregate and the DLQ,
    or beyond what a window's seq range holds."""
    partial_windows: int = 0
    """Windows whose count is below the readings of their seq range (less dead letters)."""
    overcounted_windows: int = 0
    """Windows whose count is above the readings of their seq range."""
    reemitted_windows: int = 0
    """A window emitted again with identical contents (an at-least-once replay)."""
    conflicting_windows: int = 0
    """A window emitted again with different contents."""
    dead_lettered_twice: int = 0
    """The same reading in the DLQ more than once (an at-least-once replay)."""
    input_gaps: int = 0
    """Seqs absent from the input topic between a sensor's first and last seq."""
    input_reordered: int = 0
    """Input readings stored after a higher seq of the same sensor."""
    input_duplicates: int = 0
    """Input readings whose sensor and seq were stored before."""
    undecodable: int = 0
    """Input records the processor rejects as poison (they belong in the DLQ)."""
    unsequenced: int = 0
    """Valid input readings without a seq (legacy); the audit cannot follow them."""
    unreadable_aggregates: int = 0
    """Aggregates that do not decode or carry no seq range (the audit cannot use them)."""
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing missing and nothing counted twice."""
        return self.missing == 0 and self.duplicated == 0 and self.conflicting_windows == 0


@dataclass(frozen=True)
class SensorReport:
    """One sensor with something wrong, and the first seq ranges of each problem."""

    sensor_id: str
    produced: int
    aggregated: int
    dead_lettered: int
    missing: int
    duplicated: int
    partial_windows: int
    conflicting_windows: int
    input_gaps: int
    input_reordered: int
    missing_seqs: list[tuple[int, int]]
    gap_seqs: list[tuple[int, int]]
    dead_letters_by_reason: dict[str, int]


@dataclass(frozen=True)
class AuditReport:
    """What :meth:`Ledger.report` found: totals, and the sensors with a problem."""

    totals: AuditTotals
    sensors: list[SensorReport]
    """Sensors with a problem, worst first (at most the ``limit`` asked for)."""
    sensors_with_problems: int
    undecodable_missing: list[tuple[int, int]]
    """``(partition, offset)`` of undecodable input records absent from the DLQ."""

    @property
    def ok(self) -> bool:
        return self.totals.ok

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values (what ``--json`` prints)."""
        return {"ok": self.ok, **asdict(self)}


class Ledger:
    """Per-sensor accounting of one input topic, its aggregates and its dead letters.

    Feed every input record before the aggregates that cover it (dead letters in
    between): a window's count is checked against the readings known when it arrives.
    """

    def __init__(self, *, input_topic: str, window_memory: int = DEFAULT_WINDOW_MEMORY) -> None:
        self.input_topic = input_topic
        self._memory = 2 * window_memory
        self._sensors: dict[str, _Sensor] = {}
        self._undecodable: set[tuple[int, int]] = set()
        self._dead_positions: set[tuple[int, int]] = set()
        self._large: dict[tuple[int, int], tuple[str, int]] = {}
        self._reasons: Counter[str] = Counter()
        self._unsequenced = 0
        self._dead_twice = 0
        self._unreadable_aggregates = 0

    def _sensor(self, sensor_id: str) -> _Sensor:
        sensor = self._sensors.get(sensor_id)
        if sensor is None:
            sensor = self._sensors[sensor_id] = _Sensor()
        return sensor

    # ---------------------------------------------------------------- feeding (hot paths)

    def add_input(self, partition: int, offset: int, value: bytes | None) -> None:
        """One record of the input topic, in offset order within its partition."""
        decoded = decode_reading(value if value is not None else b"")
        if type(decoded) is not SensorReading:
            self._undecodable.add((partition, offset))
            return
        seq = decoded.seq
        if seq is None:
            self._unsequenced += 1
            return
        sensor = self._sensor(decoded.sensor_id)
        if seq > sensor.top:
            sensor.top = seq
        elif seq in sensor.inputs:
            sensor.input_duplicates += 1
            return
        else:
            sensor.reordered += 1
        sensor.inputs.add(seq)
        if value is not None and len(value) > 65536:
            # A dead letter this big may be cut to fit the DLQ; then only its position
            # says which reading it was.
            self._large[partition, offset] = (decoded.sensor_id, seq)

    def add_dead_letter(self, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> None:
        """One record of the DLQ (records from other input topics are ignored)."""
        try:
            meta = DeadLetterHeaders.from_kafka_headers(headers)
        except (KeyError, ValueError, PoisonEventError):
            self._reasons["(no headers)"] += 1
            return
        if meta.original_topic != self.input_topic:
            return
        reason = meta.reason.value
        position = (meta.original_partition, meta.original_offset)
        decoded = decode_reading(value) if value else None
        if type(decoded) is SensorReading and decoded.seq is not None:
            key: tuple[str, int] | None = (decoded.sensor_id, decoded.seq)
        else:
            key = self._large.get(position)
        if key is None:
            if position in self._dead_positions:
                self._dead_twice += 1
                return
            self._dead_positions.add(position)
            self._reasons[reason] += 1
            return
        sensor = self._sensor(key[0])
        if sensor.dead.add(key[1]):
            self._dead_twice += 1
            return
        self._reasons[reason] += 1
        if sensor.dead_reasons is None:
            sensor.dead_reasons = Counter()
        sensor.dead_reasons[reason] += 1

    def add_aggregate(self, value: bytes | None) -> None:
        """One record of the aggregates topic, in offset order within its partition."""
        try:
            agg = decode_aggregate(value if value is not None else b"")
        except PoisonEventError:
            self._unreadable_aggregates += 1
            return
        first, last = agg.first_seq, agg.last_seq
        if first is None or last is None or last < first:
            self._unreadable_aggregates += 1
            return
        sensor = self._sensor(agg.sensor_id)
        digest = hash(value)
        seen = self._remember(sensor, agg.window_start, digest)
        if seen == digest:
            sensor.reemitted += 1
            return
        if seen is not None:
            sensor.conflicting += 1
        expected = sensor.inputs.count(first, last) - sensor.dead.count(first, last)
        inputs_first = sensor.inputs.first
        # A window reaching back before the audited input (a time range, or retention)
        # holds readings the audit never saw: its count cannot be checked.
        checkable = inputs_first is not None and first >= inputs_first
        if checkable and agg.count < expected:
            sensor.partial += 1
            sensor.shortfall += expected - agg.count
        elif checkable and agg.count > expected:
            sensor.overcounted += 1
            sensor.duplicated += agg.count - expected
        sensor.duplicated += sensor.covered.add(first, last)

    def _remember(self, sensor: _Sensor, window_start: int, digest: int) -> int | None:
        """Remember this window's digest; return the digest it had before, if any."""
        recent = sensor.recent
        if recent is None:
            recent = sensor.recent = array("q")
        # Windows come in order: a start after the newest remembered one is new (the hot
        # path); only a replay looks back.
        if not recent or window_start <= recent[-2]:
            for i in range(len(recent) - 2, -1, -2):
                if recent[i] == window_start:
                    before = recent[i + 1]
                    recent[i + 1] = digest
                    return before
        recent.extend((window_start, digest))
        if len(recent) > self._memory:
            del recent[:2]
        return None

    # ------------------------------------------------------------------------- reporting

    def settle(self) -> None:
        """``--follow``: readings seen before the previous call may now count as missing.

        Called every grace period, so a reading is given between one and two grace
        periods to reach an aggregate or the DLQ before the report calls it missing.
        """
        for s in self._sensors.values():
            s.settled = s.pending
            s.pending = s.top

    def report(self, *, limit: int = 100, in_flight: bool = False) -> AuditReport:
        """Count everything up. With ``in_flight`` (``--follow``), readings newer than the
        last :meth:`settle` but one are still on their way, not missing."""
        totals: Counter[str] = Counter()
        problems: list[SensorReport] = []
        problem_count = 0
        for sensor_id, s in self._sensors.items():
            inputs = s.inputs
            produced = len(inputs)
            lost = inputs.difference(s.covered, s.dead)
            if in_flight:
                lost = _upto(lost, s.settled)
            missing = len(lost) + s.shortfall
            duplicated = s.duplicated
            gaps = _gap_count(inputs)
            aggregated = produced - len(lost) - _overlap(inputs, s.dead) - s.shortfall
            dead = len(s.dead)
            totals["produced"] += produced
            totals["aggregated"] += aggregated
            totals["dead_lettered"] += dead
            totals["missing"] += missing
            totals["duplicated"] += duplicated
            totals["partial_windows"] += s.partial
            totals["overcounted_windows"] += s.overcounted
            totals["reemitted_windows"] += s.reemitted
            totals["conflicting_windows"] += s.conflicting
            totals["input_gaps"] += gaps
            totals["input_reordered"] += s.reordered
            totals["input_duplicates"] += s.input_duplicates
            if missing or duplicated or s.partial or s.conflicting or gaps or s.reordered:
                problem_count += 1
                if len(problems) < limit:
                    problems.append(
                        SensorReport(
                            sensor_id=sensor_id,
                            produced=produced,
                            aggregated=aggregated,
                            dead_lettered=dead,
                            missing=missing,
                            duplicated=duplicated,
                            partial_windows=s.partial,
                            conflicting_windows=s.conflicting,
                            input_gaps=gaps,
                            input_reordered=s.reordered,
                            missing_seqs=lost.ranges()[:_SHOWN_RANGES],
                            gap_seqs=_holes(inputs)[:_SHOWN_RANGES],
                            dead_letters_by_reason=dict(s.dead_reasons or {}),
                        )
                    )
        undecodable_missing = sorted(self._undecodable - self._dead_positions)
        problems.sort(key=lambda r: (-(r.missing + r.duplicated), r.sensor_id))
        result = AuditTotals(
            sensors=len(self._sensors),
            produced=totals["produced"],
            aggregated=totals["aggregated"],
            dead_lettered=totals["dead_lettered"] + len(self._dead_positions),
            missing=totals["missing"] + len(undecodable_missing),
            duplicated=totals["duplicated"],
            partial_windows=totals["partial_windows"],
            overcounted_windows=totals["overcounted_windows"],
            reemitted_windows=totals["reemitted_windows"],
            conflicting_windows=totals["conflicting_windows"],
            dead_lettered_twice=self._dead_twice,
            input_gaps=totals["input_gaps"],
            input_reordered=totals["input_reordered"],
            input_duplicates=totals["input_duplicates"],
            undecodable=len(self._undecodable),
            unsequenced=self._unsequenced,
            unreadable_aggregates=self._unreadable_aggregates,
            dead_letters_by_reason=dict(sorted(self._reasons.items())),
        )
        return AuditReport(
            totals=result,
            sensors=problems,
            sensors_with_problems=problem_count,
            undecodable_missing=undecodable_missing[:_SHOWN_RANGES],
        )


def _gap_count(ranges: SeqRanges) -> int:
    """Non-members between the first and the last member."""
    first, last = ranges.first, ranges.last
    if first is None or last is None:
        return 0
    return last - first + 1 - len(ranges)


def _overlap(a: SeqRanges, b: SeqRanges) -> int:
    """How many members ``a`` and ``b`` share."""
    if not b:
        return 0
    return sum(a.count(first, last) for first, last in b.ranges())


def _upto(ranges: SeqRanges, bound: int) -> SeqRanges:
    result = SeqRanges()
    for first, last in ranges.ranges():
        if first > bound:
            break
        result.add(first, min(last, bound))
    return result


def _holes(ranges: SeqRanges) -> list[tuple[int, int]]:
    """The inclusive ranges missing between the members' first and last."""
    pairs = ranges.ranges()
    return [(a_last + 1, b_first - 1) for (_, a_last), (b_first, _) in pairwise(pairs)]
