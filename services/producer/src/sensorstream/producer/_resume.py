"""Resume each sensor's ``seq`` from what the input topic already holds, at start-up.

A real device keeps its counter across restarts, and the end-to-end audit counts
readings per sensor by ``seq``: a producer that starts every sensor at 0 again after a
restart (a ``kill -9``, a deploy) writes each seq twice. So before the first reading,
the producer reads, per sensor, the highest ``seq`` already in the topic and continues
at that + 1 (0 for a sensor with nothing stored).

How, bounded: a sensor's readings all land on the partition the default partitioner
(murmur2 of the key: :func:`~sensorstream.producer._sender.partition_for`, as the
sender uses it) maps it to, in ``seq`` order. So each partition is read *backwards*
from its end in growing windows (:class:`PartitionScan`): first the last
``WINDOW_FACTOR`` records per sensor of the partition, then windows twice as long as
the one before, each ending where the previous one began, until every sensor of the
partition has been seen or the partition's beginning is reached. Sensors report
round-robin, so a topic this producer wrote is usually done after the first window:
about one record per sensor, however long the history (three at most, after a run
killed within its first round). (A sensor with nothing stored, say after
``--sensors`` grew, has its partition read to the beginning.) Only the key (which
sensor) and the ``seq`` (``seq_of``) of a record are decoded; the partitions are read
together, on one consumer.

What a ``kill -9`` leaves behind is handled by reading the topic, not by trusting any
acknowledgement: a record written but never acknowledged is in the topic, so the next
run continues after it (no seq twice); a reading generated but never written is not,
so its seq is generated again, with other values and another event id (it never
existed in Kafka). ``read_uncommitted``: the producer is idempotent, not transactional.

The last record of a sensor carries its highest seq as long as every writer resumed
(seqs rise with offsets); in a history written before resuming existed, the newest run's
seqs are the ones continued. Two producers writing the same sensors at once (a rolling
deploy that starts the new instance before the old one stops) still write each seq
twice: run one instance per fleet.

This module never writes, commits or joins a consumer group.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from sensorstream.runtime import (
    KafkaUnavailableError,
    RetriableError,
    RetriesExhaustedError,
    StopSignal,
    client_options,
    kafka_errors,
    retry,
    startup_policy,
)

from ._metrics import RETRY_RESUME_SEQS
from ._sender import partition_for
from ._simulation import seq_of
from .settings import ProducerSettings

__all__ = [
    "MIN_WINDOW",
    "NONE",
    "STALL_SECONDS",
    "WINDOW_FACTOR",
    "PartitionScan",
    "ResumedSeqs",
    "fold_records",
    "next_seqs",
    "read_highest_seqs",
    "resume_seqs",
    "sensors_by_partition",
]

NONE = -1
"""The highest seq of a sensor with no reading stored."""
WINDOW_FACTOR = 1
"""The first window holds this many records per sensor of its partition.

Sensors report round-robin, so any ``len(sensors)`` consecutive records of a run hold
each sensor of the partition once, and one window is enough, unless the last run wrote
less than one round (killed within its first round after a restart): then the next
window, twice as long, reaches into the run before."""
MIN_WINDOW = 1_000
"""Records in a first window at least: a round trip costs more than reading a few more."""
STALL_SECONDS = 10.0
"""An attempt that reads nothing for this long is given up (and retried)."""
POLL_MS = 200
FETCH_MAX_WAIT_MS = 100
PARTITION_FETCH_BYTES = 4 * 1024 * 1024
REQUEST_TIMEOUT_MS = 10_000


class _Record(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def sensors_by_partition(keys: Sequence[bytes], partitions: int) -> list[list[int]]:
    """The sensor numbers (indexes into ``keys``) on each partition, as the sender places them."""
    placed: list[list[int]] = [[] for _ in range(partitions)]
    for sensor, key in enumerate(keys):
        placed[partition_for(key, partitions)].append(sensor)
    return placed


def next_seqs(highest: Sequence[int]) -> list[int]:
    """Each sensor's next seq: 1 + its highest stored seq, 0 for one with none (:data:`NONE`)."""
    return [seq + 1 for seq in highest]


class PartitionScan:
    """One partition read backwards in growing windows until each of its sensors is seen.

    The window is ``[low, high)``. The first one is the last ``WINDOW_FACTOR`` records per
    sensor (at least ``MIN_WINDOW``); each next one is twice as long and ends where the
    previous one began. :attr:`done` once no sensor is :attr:`missing` or a window started
    at the partition's beginning. Windows are read newest first, so the window in which a
    sensor is first seen holds its newest record.
    """

    __slots__ = ("beginning", "done", "high", "low", "missing", "partition")

    def __init__(
        self,
        partition: int,
        sensors: Iterable[int],
        *,
        beginning: int,
        end: int,
        factor: int = WINDOW_FACTOR,
        minimum: int = MIN_WINDOW,
    ) -> None:
        self.partition = partition
        self.missing = set(sensors)
        """The partition's sensors not seen yet."""
        self.beginning = beginning
        self.high = end
        self.low = max(beginning, end - max(minimum, factor * len(self.missing)))
        self.done = not self.missing or end <= beginning

    def window_read(self) -> None:
        """The window ``[low, high)`` has been read: finish, or move to the next older one."""
        if not self.missing or self.low <= self.beginning:
            self.done = True
            return
        size = 2 * (self.high - self.low)
        self.high = self.low
        self.low = max(self.beginning, self.high - size)


def fold_records(
    records: Iterable[_Record],
    *,
    high: int,
    sensor_of: Mapping[bytes, int],
    highest: list[int],
    missing: set[int],
) -> tuple[int, int]:
    """Fold a partition's records below offset ``high`` into ``highest`` (per sensor number).

    A fleet sensor seen is removed from ``missing``; a record of another key is skipped,
    and so is one whose seq cannot be read (not the producer's encoding). Returns
    (records below ``high``, undecodable ones among them).
    """
    taken = 0
    undecodable = 0
    get = sensor_of.get
    for record in records:
        # Hot path, once per record read: a dict lookup and seq_of, nothing allocated.
        if record.offset >= high:
            break  # in offset order: the rest is beyond the window too
        taken += 1
        key = record.key
        sensor = None if key is None else get(key)
        if sensor is None:
            continue
        value = record.value
        if value is None:
            undecodable += 1
            continue
        try:
            seq = seq_of(value)
        except ValueError:  # rare: someone else's record under a sensor's key
            undecodable += 1
            continue
        if seq > highest[sensor]:
            highest[sensor] = seq
        missing.discard(sensor)
    return taken, undecodable


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumedSeqs:
    """What the start-up read found: each sensor's next seq, and what it cost."""

    next_seqs: list[int]
    """Per sensor number: 1 + its highest stored seq, or 0."""
    records_read: int = 0
    undecodable: int = 0
    """Records under a fleet sensor's key whose seq could not be read (skipped)."""
    complete: bool = True
    """False when a stop request cut the read short (the seqs must not be used)."""

    @property
    def sensors_resumed(self) -> int:
        """Sensors with a reading stored (next seq > 0)."""
        return sum(1 for seq in self.next_seqs if seq)

    @property
    def highest_seq(self) -> int | None:
        """The highest seq stored over all sensors, or ``None`` for an empty topic."""
        top = max(self.next_seqs, default=0) - 1
        return None if top < 0 else top


async def read_highest_seqs(
    consumer: Any,
    topic: str,
    keys: Sequence[bytes],
    partitions: int,
    *,
    stop: StopSignal | None = None,
    stall_seconds: float = STALL_SECONDS,
) -> ResumedSeqs:
    """Read ``topic`` on a started ``consumer`` (no group) and return the fleet's next seqs.

    Client errors propagate as aiokafka raises them; reading nothing for
    ``stall_seconds`` raises :class:`RetriableError`.
    """
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    # Assigned first so the client asks for the topic's metadata now: listing offsets of
    # a topic it does not know yet costs a retry backoff (100 ms) otherwise. Paused until
    # a partition has its window.
    consumer.assign(tps)
    consumer.pause(*tps)
    beginnings = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    highest = [NONE] * len(keys)
    if all(ends[tp] <= beginnings[tp] for tp in tps):
        return ResumedSeqs(next_seqs=next_seqs(highest))  # a fresh topic: nothing to read
    placed = sensors_by_partition(keys, partitions)
    sensor_of = {key: sensor for sensor, key in enumerate(keys)}
    active: dict[TopicPartition, PartitionScan] = {}
    for tp in tps:
        scan = PartitionScan(
            tp.partition, placed[tp.partition], beginning=beginnings[tp], end=ends[tp]
        )
        if not scan.done:
            active[tp] = scan
    for tp, scan in active.items():
        consumer.seek(tp, scan.low)
    consumer.resume(*active)
    records_read = 0
    undecodable = 0
    progress_at = time.monotonic()
    while active:
        if stop is not None and stop.is_set():
            return ResumedSeqs(next_seqs=next_seqs(highest), complete=False)
        batches = await consumer.getmany(*active, timeout_ms=POLL_MS)
        for tp, records in batches.items():
            reading = active.get(tp)
            if reading is None:
                continue
            taken, bad = fold_records(
                records,
                high=reading.high,
                sensor_of=sensor_of,
                highest=highest,
                missing=reading.missing,
            )
            records_read += taken
            undecodable += bad
            progress_at = time.monotonic()
        for tp, scan in list(active.items()):
            if await consumer.position(tp) < scan.high:
                continue
            progress_at = time.monotonic()
            scan.window_read()
            if scan.done:
                consumer.pause(tp)
                del active[tp]
            else:
                consumer.seek(tp, scan.low)
        if active and time.monotonic() - progress_at > stall_seconds:
            at = {tp: await consumer.position(tp) for tp in active}
            where = ", ".join(
                f"{tp.partition} at {at[tp]} of [{s.low}, {s.high})" for tp, s in active.items()
            )
            raise RetriableError(
                f"reading {topic} to resume the seqs: nothing read for {stall_seconds:g} s "
                f"(partitions {where})"
            )
    return ResumedSeqs(
        next_seqs=next_seqs(highest), records_read=records_read, undecodable=undecodable
    )


async def resume_seqs(
    settings: ProducerSettings,
    keys: Sequence[bytes],
    partitions: int,
    *,
    stop: StopSignal | None = None,
) -> ResumedSeqs:
    """The fleet's next seqs from ``settings.topic``, retried like every start-up step.

    A broker that stays unreachable past ``--startup-timeout`` raises
    :class:`KafkaUnavailableError`, naming ``--no-resume-seq`` as the way around it.
    """

    async def attempt() -> ResumedSeqs:
        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_uncommitted",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        action = f"reading {settings.topic} at {settings.bootstrap_servers} to resume the seqs"
        try:
            with kafka_errors(action):
                await consumer.start()
                return await read_highest_seqs(
                    consumer, settings.topic, keys, partitions, stop=stop
                )
        finally:
            await consumer.stop()

    try:
        return await retry(RETRY_RESUME_SEQS, attempt, policy=startup_policy(settings))
    except RetriesExhaustedError as exc:
        raise KafkaUnavailableError(
            f"cannot read {settings.topic} at {settings.bootstrap_servers} to resume the "
            f"sensors' seqs within {settings.startup_timeout:g} s (last error: "
            f"{exc.__cause__}); check the broker, raise SENSORSTREAM_STARTUP_TIMEOUT, or "
            "start every sensor at seq 0 with --no-resume-seq / SENSORSTREAM_RESUME_SEQ=false"
        ) from exc
