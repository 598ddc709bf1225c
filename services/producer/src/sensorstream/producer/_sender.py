"""Send encoded readings to Kafka in whole batches and account for every acknowledgement.

Readings are partitioned by key exactly like the Java client's (and aiokafka's)
default partitioner, murmur2 of the key, so a sensor always lands on the same
partition and its ``seq`` stays in order there. Each partition's readings are
appended to aiokafka batches (``create_batch`` / ``append`` / ``send_batch``); a
semaphore bounds the batches in flight, so a slow broker makes :meth:`BatchSender.send`
wait instead of buffering without limit.

Nothing is dropped silently: every event handed to :meth:`send` ends up counted as
acknowledged or failed (or is still in flight, which :meth:`flush` reports).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from ._metrics import ProducerMetrics

__all__ = ["BatchSender", "DeliveryCounts", "LatencyWindow", "error_kind", "partition_for"]


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default Kafka partitioner picks for ``key``."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def error_kind(exc: BaseException) -> str:
    """A bounded label for a send error: the Kafka error class, or ``other``."""
    if isinstance(exc, KafkaError):
        return type(exc).__name__
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, OSError):
        return "connection"
    return "other"


@dataclass(slots=True)
class DeliveryCounts:
    """Events by delivery state; ``sent - acked - failed`` are in flight.

    ``sent`` counts events handed to :meth:`BatchSender.send`, including any still
    waiting there for a free batch slot.
    """

    sent: int = 0
    acked: int = 0
    failed: int = 0
    failed_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked - self.failed


class LatencyWindow:
    """Per-batch send latencies since the last :meth:`take`, for the summary line's p99."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: list[tuple[float, int]] = []

    def add(self, seconds: float, events: int) -> None:
        self._samples.append((seconds, events))

    def take_p99(self) -> float | None:
        """The event-weighted 99th percentile since the last call, then reset."""
        samples, self._samples = self._samples, []
        if not samples:
            return None
        samples.sort()
        total = sum(n for _, n in samples)
        threshold = 0.99 * total
        running = 0
        for seconds, events in samples:
            running += events
            if running >= threshold:
                return seconds
        return samples[-1][0]


class BatchSender:
    """Partitions, batches and sends encoded readings on an already started producer.

    ``send`` is called by one task (the producing loop); acknowledgement callbacks run
    on the event loop. ``on_failure`` is called once per failed batch (for logging).
    """

    def __init__(
        self,
        producer: Any,
        topic: str,
        *,
        partitions: int,
        max_in_flight_batches: int,
        metrics: ProducerMetrics,
        on_failure: Callable[[BaseException, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self._producer = producer
        self._topic = topic
        self._partitions = partitions
        self._slots = asyncio.Semaphore(max_in_flight_batches)
        self._max_in_flight = max_in_flight_batches
        self._metrics = metrics
        self._on_failure = on_failure
        self._clock = clock
        self._partition_of: dict[bytes, int] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.counts = DeliveryCounts()
        self.latency = LatencyWindow()
        self.last_ack_at: float | None = None

    @property
    def batches_in_flight(self) -> int:
        return len(self._pending)

    def partition_of(self, key: bytes) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            partition = partition_for(key, self._partitions)
            self._partition_of[key] = partition
        return partition

    async def send(self, records: Sequence[tuple[bytes, bytes]], timestamp_ms: int) -> None:
        """Queue ``records`` (key, value) in per-partition batches; waits while too many fly."""
        if not records:
            return
        # Counted as sent on entry: if this call is cancelled while it waits for a slot
        # (shutdown with the broker gone), what it never handed over shows as in flight,
        # i.e. unacknowledged, instead of vanishing from the accounting.
        self.counts.sent += len(records)
        self._metrics.events_sent.inc(len(records))
        by_partition: list[list[tuple[bytes, bytes]]] = [[] for _ in range(self._partitions)]
        partition_of = self._partition_of
        for record in records:
            # Hot path, once per event: a dict lookup and a list append.
            partition = partition_of.get(record[0])
            if partition is None:
                partition = self.partition_of(record[0])
            by_partition[partition].append(record)
        for partition, chunk in enumerate(by_partition):
            if chunk:
                await self._send_partition(partition, chunk, timestamp_ms)

    async def _send_partition(
        self, partition: int, records: list[tuple[bytes, bytes]], timestamp_ms: int
    ) -> None:
        producer = self._producer
        batch = producer.create_batch()
        append = batch.append
        in_batch = 0
        for key, value in records:
            # Hot path, once per event: one append, no await.
            if append(key=key, value=value, timestamp=timestamp_ms) is None:
                if in_batch == 0:
                    raise ValueError(
                        f"a {len(value)}-byte record does not fit in an empty batch; "
                        "raise --batch-size / SENSORSTREAM_BATCH_SIZE"
                    )
                await self._submit(batch, partition, in_batch)
                batch = producer.create_batch()
                append = batch.append
                append(key=key, value=value, timestamp=timestamp_ms)
                in_batch = 0
            in_batch += 1
        await self._submit(batch, partition, in_batch)

    async def _submit(self, batch: Any, partition: int, events: int) -> None:
        await self._slots.acquire()
        self._metrics.batch_size.observe(events)
        enqueued = self._clock()
        try:
            batch.close()
            future = await self._producer.send_batch(batch, self._topic, partition=partition)
        except Exception as exc:
            self._slots.release()
            self._settle_failure(exc, events)
            return
        self._pending.add(future)
        self._idle.clear()
        self._metrics.events_in_flight.set(self.counts.in_flight)
        future.add_done_callback(lambda done: self._on_done(done, events, enqueued))

    def _on_done(self, future: asyncio.Future[Any], events: int, enqueued: float) -> None:
        self._pending.discard(future)
        self._slots.release()
        if future.cancelled():
            self._settle_failure(asyncio.CancelledError(), events)
        elif (exc := future.exception()) is not None:
            self._settle_failure(exc, events)
        else:
            now = self._clock()
            self.counts.acked += events
            self.last_ack_at = now
            self._metrics.events_acked.inc(events)
            self._metrics.send_latency.observe(now - enqueued)
            self.latency.add(now - enqueued, events)
        self._metrics.events_in_flight.set(self.counts.in_flight)
        if not self._pending:
            self._idle.set()

    def _settle_failure(self, exc: BaseException, events: int) -> None:
        kind = error_kind(exc)
        counts = self.counts
        counts.failed += events
        counts.failed_by_kind[kind] = counts.failed_by_kind.get(kind, 0) + events
        self._metrics.send_errors(kind).inc(events)
        if self._on_failure is not None:
            self._on_failure(exc, events)

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not a guard
        """Wait up to ``timeout`` s until every sent batch is acked or failed; True if so."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
