"""Send encoded readings to Kafka in whole batches, in order, and never drop one.

Readings are partitioned by key exactly like the Java client's (and aiokafka's)
default partitioner, murmur2 of the key, so a sensor always lands on the same
partition and its ``seq`` stays in order there. :meth:`BatchSender.send` puts each
partition's readings into that partition's *lane*; one task per lane appends them to
aiokafka batches (``create_batch`` / ``append`` / ``send_batch``) and hands those over.
A semaphore bounds the batches in flight and a lane holds at most ``LANE_CAPACITY``
readings, so a slow or absent broker makes ``send`` wait instead of buffering without
limit — but a partition whose leader is moving holds up only its own lane until it is
full, not the partitions that are fine.

What the producing loop can rely on:

- **Order.** One task calls :meth:`~BatchSender.send`; each lane batches and hands over
  its readings in the order they were sent, so each partition gets its readings in the
  order they were generated.
- **An outage is waited out.** Handing a batch over waits while its partition's queue is
  full (the broker is away). Each wait is bounded by ``ENQUEUE_ATTEMPT_SECONDS`` and
  then retried *in place* through ``sensorstream.runtime.retry`` with no time budget
  (operation ``enqueue batch``: logged as ``retry_scheduled`` and counted): nothing
  later of that partition was handed over meanwhile, so the order holds. Batches
  already handed over are retried by aiokafka until acknowledged (idempotent, and
  never expired: ``_client.py``). Only cancellation (the shutdown deadline) ends the wait.
- **A failure is fatal.** A batch the client accepted and then failed cannot be resent
  without reordering its partition, and an error retrying cannot fix (authorization,
  record too large, ...) will not go away: the first one sets :attr:`~BatchSender.failure`
  (a :class:`DeliveryFailedError`) and :attr:`~BatchSender.failed`, and ``send`` raises
  it from then on. Nothing is counted and skipped.
- **Accounting.** Every record handed to ``send`` stays listed by
  :meth:`~BatchSender.unacknowledged` until the broker acknowledges it, also when the
  call was cancelled before it could hand its batches over.

Tracing (``sensorstream.runtime.tracing``, off by default): each ``send`` call is one
``produce <topic>`` span, and the records of a sampled one carry its context in their
``traceparent`` / ``tracestate`` headers (one header list shared by the call's records).
Like the aiokafka instrumentation's send span, it covers handing the records over, not
the acknowledgement (``send_latency_seconds`` has that). With tracing off, a chunk
carries no headers and the per-record append is the one without them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from sensorstream.runtime import (
    FatalError,
    RecordTooLargeError,
    RetriableError,
    RetryPolicy,
    SensorstreamError,
    retry,
    tracing,
    translate_kafka_error,
)

from ._metrics import RETRY_ENQUEUE_BATCH, ProducerMetrics

__all__ = [
    "ENQUEUE_ATTEMPT_SECONDS",
    "ENQUEUE_POLICY",
    "LANE_CAPACITY",
    "LANE_SECONDS",
    "BatchSender",
    "DeliveryCounts",
    "DeliveryFailedError",
    "LatencyWindow",
    "error_kind",
    "lane_capacity",
    "partition_for",
]

EncodedRecord = tuple[bytes, bytes]
Chunk = tuple[object, list[EncodedRecord], int, "tracing.TraceHeaders | None"]
"""(token, records, timestamp_ms, trace headers or None) as ``send`` queued them."""

ENQUEUE_ATTEMPT_SECONDS = 10.0
"""How long one attempt to hand a batch over may wait for its partition's queue.

Shorter than aiokafka's own ``request_timeout_ms`` (40 s), so an outage shows in the
log and in ``retries_total`` within seconds. Calling the wait off is safe: until
``send_batch`` returns, the client has not taken the batch.
"""
LANE_SECONDS = 5.0
"""How much of its partition's share of the rate a lane holds before ``send`` waits:
enough to ride out a leader failover (seconds) without holding up the other
partitions; a longer outage then holds generation back, and ``behind_schedule`` shows
the debt."""
LANE_MIN = 1_000
LANE_CAPACITY = 20_000
"""A lane's readings at ``--rate max`` (~4 MB at 200 bytes): a bound on memory."""


def lane_capacity(rate: float | None, partitions: int) -> int:
    """Readings a lane holds: LANE_SECONDS of its share of ``rate`` (None: max rate)."""
    if rate is None:
        return LANE_CAPACITY
    return max(LANE_MIN, math.ceil(rate * LANE_SECONDS / partitions))


ENQUEUE_POLICY = RetryPolicy(budget=math.inf, wait_initial=0.1, wait_max=1.0, wait_jitter=0.1)
"""Retry handing a batch over until it is taken: the attempt itself is the long wait."""


class DeliveryFailedError(FatalError):
    """A batch could not be delivered, and retrying or resending cannot fix that: stop."""


class _HandOverWatchdog:
    """Calls off a hand-over that has waited ``limit`` s, like ``asyncio.timeout`` would.

    ``asyncio.timeout`` around each ``send_batch`` costs a timer per batch (~5 us, a few
    per cent of the sender's CPU at full rate, measured). This arms one timer while
    hand-overs happen, which looks every ``limit / 4`` s (at most 1 s) whether the current
    one started ``limit`` s ago; if so it cancels the waiting task. A hand-over is thus
    called off after ``limit`` to ``limit`` + 1 s. Used by one task at a time.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_limit", "_since", "_task", "_tick")

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self._tick = min(1.0, limit / 4)
        self._since: float | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._fired = False
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """The current task is about to await a hand-over."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._since = loop.time()
        self._task = task
        self._cancelling = task.cancelling()
        if self._handle is None:
            self._handle = loop.call_later(self._tick, self._check)

    def stop(self) -> None:
        """The hand-over is over (taken, failed or called off)."""
        self._since = None

    def called_off(self) -> bool:
        """On a CancelledError from the hand-over: True if this watchdog alone caused it."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        # As asyncio.timeout does: ours unless someone else asked to cancel meanwhile.
        return self._task.uncancel() <= self._cancelling

    def _check(self) -> None:
        self._handle = None
        since = self._since
        if since is None or self._task is None:
            return  # idle: the next start() arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() - since >= self._limit:
            self._since = None
            self._fired = True
            self._task.cancel()
        else:
            self._handle = loop.call_later(self._tick, self._check)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default Kafka partitioner picks for ``key``."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def error_kind(exc: BaseException) -> str:
    """A bounded label for a send error: the Kafka error class, or ``other``."""
    if isinstance(exc, KafkaError | SensorstreamError):
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


class _Lane:
    """One partition's readings waiting to be batched and handed over, and its pump task.

    Filled by :meth:`BatchSender.send`, emptied by the lane's own task, so a partition
    that cannot take batches (its leader is moving, its broker is away) holds up only
    itself until its lane is full; the other partitions keep flowing meanwhile.
    """

    __slots__ = ("busy", "chunks", "partition", "queued", "space", "task", "wakeup", "watchdog")

    def __init__(self, partition: int, watchdog: _HandOverWatchdog) -> None:
        self.partition = partition
        self.chunks: deque[Chunk] = deque()
        """The chunks in the order they were sent."""
        self.queued = 0
        """Records in ``chunks``."""
        self.busy = False
        """The pump holds records it took from ``chunks`` and has not handed over yet."""
        self.wakeup = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.watchdog = watchdog
        self.task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self.chunks and not self.busy


def _appender(batch: Any, headers: tracing.TraceHeaders | None) -> Callable[..., Any]:
    """``batch.append``, adding ``headers`` to every record if there are any."""
    append: Callable[..., Any] = batch.append
    if headers is None:
        return append

    # A closure, not functools.partial: partial merges its keywords per call (~0.5 us).
    def append_with_headers(*, key: bytes, value: bytes, timestamp: int) -> Any:
        return append(key=key, value=value, timestamp=timestamp, headers=headers)

    return append_with_headers


class BatchSender:
    """Partitions, batches and sends encoded readings on an already started producer.

    ``send`` is called by one task (the producing loop): it splits the records by
    partition into per-partition *lanes* and returns; one task per lane batches and
    hands them over, in order. ``send`` waits only when a lane holds
    ``lane_capacity`` records (the broker is not taking them: memory stays bounded),
    and a batch slot bounds what is in flight. Acknowledgement callbacks run on the
    event loop. ``on_failure`` is called once per failed batch (for logging).
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
        enqueue_attempt: float = ENQUEUE_ATTEMPT_SECONDS,
        enqueue_policy: RetryPolicy = ENQUEUE_POLICY,
        lane_capacity: int = LANE_CAPACITY,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self._producer = producer
        self._topic = topic
        self._span_name = f"produce {topic}"
        self._partitions = partitions
        self._slots = asyncio.Semaphore(max_in_flight_batches)
        self._max_in_flight = max_in_flight_batches
        self._metrics = metrics
        self._on_failure = on_failure
        self._clock = clock
        self._enqueue_attempt = enqueue_attempt
        self._enqueue_policy = enqueue_policy
        self._lane_capacity = lane_capacity
        self._lanes = [
            _Lane(partition, _HandOverWatchdog(enqueue_attempt)) for partition in range(partitions)
        ]
        self._partition_of: dict[bytes, int] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        # Batch (or a token for records not yet batched) -> the slices (records, start,
        # end) it carries, from send() until the broker acknowledged them.
        self._unacked: dict[object, list[tuple[Sequence[EncodedRecord], int, int]]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.counts = DeliveryCounts()
        self.latency = LatencyWindow()
        self.last_ack_at: float | None = None
        self.failure: DeliveryFailedError | None = None
        """The first failure that stopped delivery; ``send`` raises it from then on."""
        self.failed = asyncio.Event()
        """Set together with :attr:`failure`."""

    @property
    def batches_in_flight(self) -> int:
        return len(self._pending)

    @property
    def queued(self) -> int:
        """Records sent but not yet batched and handed over (waiting in the lanes)."""
        return sum(lane.queued for lane in self._lanes)

    def partition_of(self, key: bytes) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            partition = partition_for(key, self._partitions)
            self._partition_of[key] = partition
        return partition

    def unacknowledged(self) -> list[EncodedRecord]:
        """Every record given to :meth:`send` that the broker has not acknowledged."""
        return [
            record
            for slices in self._unacked.values()
            for records, start, end in slices
            for record in records[start:end]
        ]

    async def send(self, records: Sequence[EncodedRecord], timestamp_ms: int) -> None:
        """Queue ``records`` (key, value) in their partitions' lanes; waits while a lane is full.

        Raises :class:`DeliveryFailedError` once delivery has failed (see the module doc).
        """
        if not records:
            return
        if self.failure is not None:
            raise self.failure
        if tracing.enabled:
            await self._send_traced(records, timestamp_ms)
            return
        await self._send(records, timestamp_ms, None)

    async def _send_traced(self, records: Sequence[EncodedRecord], timestamp_ms: int) -> None:
        """``_send`` inside a ``produce`` span whose context the records carry (if sampled)."""
        span = tracing.start_span(
            self._span_name,
            kind="producer",
            attributes={
                tracing.ATTR_SYSTEM: "kafka",
                tracing.ATTR_DESTINATION: self._topic,
                tracing.ATTR_OPERATION_TYPE: "send",
                tracing.ATTR_OPERATION_NAME: "produce",
                tracing.ATTR_BATCH_COUNT: len(records),
            },
        )
        try:
            await self._send(records, timestamp_ms, tracing.inject(span) or None)
        except Exception as exc:
            tracing.record_error(span, exc)
            raise
        finally:
            span.end()

    async def _send(
        self,
        records: Sequence[EncodedRecord],
        timestamp_ms: int,
        headers: tracing.TraceHeaders | None,
    ) -> None:
        # Counted as sent on entry: if this call is cancelled while it waits (shutdown
        # with the broker gone), what it never handed over shows as in flight, i.e.
        # unacknowledged, instead of vanishing from the accounting.
        self.counts.sent += len(records)
        self._metrics.events_sent.inc(len(records))
        by_partition: list[list[EncodedRecord]] = [[] for _ in range(self._partitions)]
        partition_of = self._partition_of
        for record in records:
            # Hot path, once per event: a dict lookup and a list append.
            partition = partition_of.get(record[0])
            if partition is None:
                partition = self.partition_of(record[0])
            by_partition[partition].append(record)
        # Every record is listed as unacknowledged before the first await, so a call
        # cancelled while it waits leaves nothing unaccounted for.
        unacked = self._unacked
        full: list[_Lane] = []
        for lane, chunk in zip(self._lanes, by_partition, strict=True):
            if not chunk:
                continue
            token = object()
            unacked[token] = [(chunk, 0, len(chunk))]
            lane.chunks.append((token, chunk, timestamp_ms, headers))
            lane.queued += len(chunk)
            if lane.task is None:
                lane.task = asyncio.create_task(
                    self._pump(lane), name=f"send-{self._topic}-{lane.partition}"
                )
            lane.wakeup.set()
            if lane.queued >= self._lane_capacity:
                lane.space.clear()
                full.append(lane)
        self._idle.clear()
        for lane in full:
            # Only a lane whose partition is not taking batches fills up: wait for it
            # (every other lane already has its share of this call).
            await lane.space.wait()
            if self.failure is not None:
                raise self.failure

    async def _pump(self, lane: _Lane) -> None:
        """One lane's task: batch what is queued, hand it over in order, again."""
        unacked = self._unacked
        try:
            while self.failure is None:
                if not lane.chunks:
                    self._check_idle()
                    lane.wakeup.clear()
                    await lane.wakeup.wait()
                    continue
                taken = list(lane.chunks)
                lane.chunks.clear()
                lane.busy = True
                batches: list[tuple[Any, list[tuple[Sequence[EncodedRecord], int, int]], int]]
                try:
                    batches = self._fill(taken)
                except RecordTooLargeError as exc:
                    self._fail(exc, sum(len(c) for _, c, _, _ in taken), "batching")
                    return
                # From the tokens to the batches, without an await in between.
                for token, _, _, _ in taken:
                    del unacked[token]
                for batch, slices, _ in batches:
                    unacked[batch] = slices
                for batch, _, events in batches:
                    await self._submit(batch, lane.partition, events)
                    lane.queued -= events
                    if lane.queued < self._lane_capacity:
                        lane.space.set()
                lane.busy = False
        except DeliveryFailedError:
            pass  # recorded in self.failure; send() and flush() report it
        finally:
            lane.busy = False
            lane.space.set()  # wake a send() waiting on this lane (it raises the failure)
            self._check_idle()

    def _fill(
        self, chunks: list[Chunk]
    ) -> list[tuple[Any, list[tuple[Sequence[EncodedRecord], int, int]], int]]:
        """Append the chunks' records to new batches: (batch, its slices, its events)."""
        producer = self._producer
        out: list[tuple[Any, list[tuple[Sequence[EncodedRecord], int, int]], int]] = []
        batch = producer.create_batch()
        slices: list[tuple[Sequence[EncodedRecord], int, int]] = []
        events = 0
        for _, records, timestamp_ms, headers in chunks:
            append = _appender(batch, headers)
            start = 0
            end = 0
            for key, value in records:
                # Hot path, once per event: one append, no await.
                if append(key=key, value=value, timestamp=timestamp_ms) is None:
                    if events == 0 and end == start:
                        raise RecordTooLargeError(
                            f"a {len(value)}-byte record does not fit in an empty batch; "
                            "raise --batch-size / SENSORSTREAM_BATCH_SIZE"
                        )
                    if end > start:
                        slices.append((records, start, end))
                    out.append((batch, slices, events + end - start))
                    start = end
                    batch = producer.create_batch()
                    append = _appender(batch, headers)
                    slices = []
                    events = 0
                    if append(key=key, value=value, timestamp=timestamp_ms) is None:
                        raise RecordTooLargeError(
                            f"a {len(value)}-byte record does not fit in an empty batch; "
                            "raise --batch-size / SENSORSTREAM_BATCH_SIZE"
                        )
                end += 1
            if end > start:
                slices.append((records, start, end))
                events += end - start
        if events:
            out.append((batch, slices, events))
        return out

    def _check_idle(self) -> None:
        if not self._pending and all(lane.idle for lane in self._lanes):
            self._idle.set()

    async def close(self) -> None:
        """Stop the lanes' tasks (shutdown); what they held stays unacknowledged."""
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _submit(self, batch: Any, partition: int, events: int) -> None:
        await self._slots.acquire()
        if self.failure is not None:
            # Failed while this lane waited for the slot: hand nothing more over.
            self._slots.release()
            raise self.failure
        self._metrics.batch_size.observe(events)
        enqueued = self._clock()
        try:
            batch.close()
            future = await self._hand_over(batch, partition)
        except SensorstreamError as exc:  # not retriable: retry() only lets others through
            self._slots.release()
            self._fail(exc, events, f"handing {events} events for {self._topic}-{partition} over")
            raise self._stopped()  # noqa: B904 - its cause is set, to the first failure
        except BaseException:  # cancelled (shutdown deadline), or a bug
            self._slots.release()
            raise
        self._pending.add(future)
        self._idle.clear()
        self._metrics.events_in_flight.set(self.counts.in_flight)
        future.add_done_callback(
            lambda done: self._on_done(done, batch, partition, events, enqueued)
        )

    async def _hand_over(self, batch: Any, partition: int) -> asyncio.Future[Any]:
        """``send_batch``, retried in place while the partition's queue stays full."""
        try:
            # The good path stays out of the retry machinery (tens of us per call).
            return await self._attempt(batch, partition)
        except RetriableError as exc:
            first: list[RetriableError] = [exc]

        async def again() -> asyncio.Future[Any]:
            # Replays the first failure, so retry() logs and counts it like the others.
            if first:
                raise first.pop()
            return await self._attempt(batch, partition)

        return await retry(RETRY_ENQUEUE_BATCH, again, policy=self._enqueue_policy)

    async def _attempt(self, batch: Any, partition: int) -> asyncio.Future[Any]:
        watchdog = self._lanes[partition].watchdog
        watchdog.start()
        try:
            future: asyncio.Future[Any] = await self._producer.send_batch(
                batch, self._topic, partition=partition
            )
        # What kafka_errors does, inline: its generator context manager per batch would
        # cost more than the rest of this method.
        except (KafkaError, OSError) as exc:
            action = f"handing a batch for {self._topic}-{partition} to the Kafka client"
            raise translate_kafka_error(exc, action) from exc
        except asyncio.CancelledError:
            if not watchdog.called_off():
                raise  # the shutdown deadline, not ours
            raise RetriableError(
                f"the queue of {self._topic}-{partition} stayed full for "
                f"{self._enqueue_attempt:g} s (the broker is not taking batches)"
            ) from None
        finally:
            watchdog.stop()
        return future

    def _on_done(
        self, future: asyncio.Future[Any], batch: Any, partition: int, events: int, enqueued: float
    ) -> None:
        self._pending.discard(future)
        self._slots.release()
        exc: BaseException | None
        exc = asyncio.CancelledError() if future.cancelled() else future.exception()
        if exc is None:
            now = self._clock()
            del self._unacked[batch]
            self.counts.acked += events
            self.last_ack_at = now
            self._metrics.events_acked.inc(events)
            self._metrics.send_latency.observe(now - enqueued)
            self.latency.add(now - enqueued, events)
        else:
            self._fail(exc, events, f"delivering {events} events to {self._topic}-{partition}")
        self._metrics.events_in_flight.set(self.counts.in_flight)
        self._check_idle()

    def _fail(self, exc: BaseException, events: int, action: str) -> None:
        # Labelled by the client's error when ours wraps one (bounded either way).
        cause = exc.__cause__ if isinstance(exc, SensorstreamError) else None
        kind = error_kind(exc if cause is None else cause)
        counts = self.counts
        counts.failed += events
        counts.failed_by_kind[kind] = counts.failed_by_kind.get(kind, 0) + events
        self._metrics.send_errors(kind).inc(events)
        if self.failure is None:
            error = (
                exc if isinstance(exc, SensorstreamError) else translate_kafka_error(exc, action)
            )
            self.failure = DeliveryFailedError(
                f"{error}; the producer stopped rather than drop or reorder readings"
            )
            self.failure.__cause__ = exc
            self.failed.set()
        if self._on_failure is not None:
            self._on_failure(exc, events)

    def _stopped(self) -> DeliveryFailedError:
        assert self.failure is not None
        return self.failure

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not a guard
        """Wait up to ``timeout`` s until every sent record is acked or failed; True if so."""
        try:
            await asyncio.wait_for(self._drained(), timeout)
        except TimeoutError:
            return False
        return True

    async def _drained(self) -> None:
        while True:
            await self._idle.wait()
            if self.failure is not None or (
                not self._pending and all(lane.idle for lane in self._lanes)
            ):
                return
            self._idle.clear()
