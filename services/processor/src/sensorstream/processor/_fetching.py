"""Fetching and flow control: one task runs ``getmany`` and fills each partition's feed.

A :class:`PartitionFeed` is the channel between the fetch loop and one partition's
worker. The fetch loop pushes fetched records into it (an offset at most once) and
records what the broker last said about the partition: its end offset and when the
last fetch response for it arrived. The worker takes records from it in chunks.

* **Flow control**: a feed holding ``--partition-buffer`` records is paused (the
  consumer stops fetching the partition); once its worker has drained it below half,
  it is resumed. Memory stays flat however large the backlog, and because fetching
  never waits for a worker, a slow handler never makes this member miss
  ``max_poll_interval``.
* **Idle means idle**: :meth:`PartitionFeed.quiet_for` is how long the broker has
  confirmed, fetch response after fetch response, that the partition is caught up and
  nothing new arrived. Only the broker's answers count: while fetches fail, the broker
  is unreachable or the partition's leader is moving, no response arrives, the quiet
  time does not grow, and a gap longer than ``stale_after`` between two responses
  starts it again from zero. And while *any* assigned partition goes unanswered, no
  partition's quiet time counts: a broker that died also held follower replicas, and
  with ``acks=all`` the partitions it followed stop exposing new records (their high
  watermark stalls) until the cluster drops it from their ISR — those partitions
  answer "caught up" although their producers are writing. So an outage or a failover
  is never mistaken for quiet sensors, and windows never close for it.

The fetch loop retries retriable fetch errors within ``--retry-budget`` and raises
:class:`~sensorstream.schema.FatalError` otherwise; it never waits for a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from sensorstream.runtime import RetriableError, RetryPolicy, kafka_errors, retry

from ._metrics import ProcessorMetrics

__all__ = ["Fetcher", "PartitionFeed"]

log = structlog.get_logger("sensorstream.processor")

_POLL_TIMEOUT_MS = 100
_OBSERVE_EVERY = 0.1
"""Seconds between two looks at what the broker said: quiet time to a tenth of a second
is plenty, and looking after every fetch costs CPU at low rates."""


class PartitionFeed:
    """Fetched records of one partition waiting for its worker, and the broker's word on it.

    Written by the fetch loop (``push``, ``observe``) and by the worker (``take``,
    ``done``); both run on one event loop, so no lock is needed.
    """

    __slots__ = (
        "_chunks",
        "_last_response",
        "_on_drained",
        "_opened_at",
        "_quiet_since",
        "_stale_after",
        "_wakeup",
        "capacity",
        "depth",
        "end_offset",
        "fed_until",
        "last_event_time",
        "paused",
        "processed_until",
        "tp",
    )

    def __init__(
        self,
        tp: TopicPartition,
        *,
        capacity: int,
        stale_after: float,
        on_drained: Callable[[TopicPartition], None] | None = None,
    ) -> None:
        self.tp = tp
        self.capacity = capacity
        self._stale_after = stale_after
        self._on_drained = on_drained
        self._chunks: deque[Sequence[Any]] = deque()
        self._wakeup = asyncio.Event()
        self.depth = 0
        """Records fetched but not yet processed."""
        self.paused = False
        """Set by the fetch loop when it paused this partition; cleared when drained."""
        self.fed_until: int | None = None
        """Offset after the last record pushed."""
        self.end_offset: int | None = None
        """The partition's end offset (high watermark, or LSO when read_committed) as the
        broker reported it in the last fetch response."""
        self.processed_until: int | None = None
        """Offset after the last record the worker finished (outputs acknowledged)."""
        self.last_event_time: int | None = None
        """Newest event time (epoch ms) the worker processed, for lag in seconds."""
        self._last_response: float | None = None
        self._quiet_since: float | None = None
        self._opened_at = time.time()

    # -- the fetch loop's side --------------------------------------------------------
    def push(self, records: Sequence[Any]) -> None:
        """Queue fetched records (in offset order); an offset already pushed is dropped."""
        if not records:
            return
        fed_until = self.fed_until
        if fed_until is not None and records[0].offset < fed_until:
            fresh = [r for r in records if r.offset >= fed_until]
            log.warning(
                "records_refed_dropped",
                partition=self.tp.partition,
                offset=records[0].offset,
                fed_until=fed_until,
                dropped=len(records) - len(fresh),
            )
            if not fresh:
                return
            records = fresh
        self.fed_until = records[-1].offset + 1
        self._chunks.append(records)
        self.depth += len(records)
        self._quiet_since = None  # records arrived: not quiet
        self._wakeup.set()

    @property
    def full(self) -> bool:
        return self.depth >= self.capacity

    def is_news(self, responded_at: float) -> bool:
        """True if ``responded_at`` is a fetch response this feed has not observed yet."""
        return self._last_response is None or responded_at > self._last_response

    def observe(self, *, responded_at: float, end_offset: int | None, position: int) -> None:
        """The broker answered a fetch for this partition at wall time ``responded_at``."""
        last = self._last_response
        if last is not None and responded_at <= last:
            return  # nothing new since the last look
        self._last_response = responded_at
        self.end_offset = end_offset
        caught_up = end_offset is not None and position >= end_offset and not self._chunks
        if not caught_up:
            self._quiet_since = None
        elif self._quiet_since is None or last is None or responded_at - last > self._stale_after:
            self._quiet_since = responded_at  # a new stretch of confirmed quiet starts here

    def unanswered(self, now: float) -> bool:
        """True if the broker has not answered a fetch for this partition for stale_after s
        (never answered: since the feed opened). A paused partition is not fetched: never."""
        if self.paused:
            return False
        last = self._last_response if self._last_response is not None else self._opened_at
        return now - last > self._stale_after

    def unconfirmed(self) -> None:
        """Another partition went unanswered: the quiet stretch so far does not count."""
        self._quiet_since = None

    def quiet_for(self) -> float:
        """Seconds the broker has confirmed the partition caught up and silent (else 0)."""
        since, last = self._quiet_since, self._last_response
        if since is None or last is None or self._chunks:
            return 0.0
        return last - since

    # -- the worker's side ------------------------------------------------------------
    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a tick, not a guard
        """Return when records are queued, or after ``timeout`` seconds."""
        if self._chunks:
            return
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)

    def wake(self) -> None:
        """Wake a waiting worker (it is being stopped)."""
        self._wakeup.set()

    def take(self, limit: int) -> list[Any]:
        """Up to ``limit`` queued records, in offset order."""
        records: list[Any] = []
        chunks = self._chunks
        while chunks and len(records) < limit:
            chunk = chunks[0]
            room = limit - len(records)
            if len(chunk) <= room:
                records.extend(chunks.popleft())
            else:
                records.extend(chunk[:room])
                chunks[0] = chunk[room:]
        return records

    def done(self, count: int, next_offset: int, last_event_time: int | None) -> None:
        """The worker finished ``count`` taken records, up to ``next_offset``."""
        self.depth -= count
        self.processed_until = next_offset
        if last_event_time is not None and (
            self.last_event_time is None or last_event_time > self.last_event_time
        ):
            self.last_event_time = last_event_time
        if self.paused and self.depth < self.capacity // 2:
            self.paused = False
            if self._on_drained is not None:
                self._on_drained(self.tp)

    def clear(self) -> None:
        """Drop what is queued (the worker stopped; the next owner fetches it again)."""
        self._chunks.clear()
        self.depth = 0


class Fetcher:
    """The fetch loop, the feeds it fills, pause/resume and the lag gauges."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        max_batch: int,
        partition_buffer: int,
        fetch_max_wait: float,
        read_committed: bool,
        policy: RetryPolicy,
        metrics: ProcessorMetrics,
    ) -> None:
        self._consumer = consumer
        self._max_batch = max_batch
        self._capacity = partition_buffer
        self._read_committed = read_committed
        self._policy = policy
        self._metrics = metrics
        # A healthy, empty partition is answered every fetch_max_wait; a longer gap means
        # the broker was away (or the leader moved) and the quiet time starts over. Kept
        # well below any sensible idle timeout: a stall is noticed before it can count.
        self._stale_after = max(1.0, 2 * fetch_max_wait)
        self.feeds: dict[TopicPartition, PartitionFeed] = {}
        self._observed_at = 0.0

    # -- feeds --------------------------------------------------------------------------
    def open_feed(self, tp: TopicPartition) -> PartitionFeed:
        feed = PartitionFeed(
            tp, capacity=self._capacity, stale_after=self._stale_after, on_drained=self._resume
        )
        self.feeds[tp] = feed
        return feed

    def close_feed(self, tp: TopicPartition) -> None:
        feed = self.feeds.pop(tp, None)
        if feed is not None:
            feed.clear()
        self._metrics.paused_partitions.set(sum(f.paused for f in self.feeds.values()))

    def _resume(self, tp: TopicPartition) -> None:
        if tp in self.feeds and tp in self._consumer.assignment():
            self._consumer.resume(tp)
        self._metrics.paused_partitions.set(sum(f.paused for f in self.feeds.values()))

    @property
    def paused(self) -> int:
        return sum(feed.paused for feed in self.feeds.values())

    # -- the loop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, check: Callable[[], None]) -> None:
        """Fetch until ``stop`` is set; ``check`` raises if the group member failed."""
        consumer = self._consumer
        feeds = self.feeds
        while not stop.is_set():
            try:  # the direct call first: a retry loop costs ~70 us, a fetch ~100 us
                batches = await self._getmany()
            except RetriableError:
                batches = await retry("fetch", self._getmany, policy=self._policy)
            for tp, records in batches.items():
                feed = feeds.get(tp)
                if feed is None:
                    # aiokafka marks a partition fetchable before on_assigned has read
                    # its committed offset and opened the feed. If it is ours, give the
                    # records back (rewind): on_assigned's seek or the next fetch gets
                    # them again; without a commit they would otherwise be skipped.
                    if tp in consumer.assignment():
                        consumer.seek(tp, records[0].offset)
                    continue
                feed.push(records)
                if feed.full and not feed.paused:
                    consumer.pause(tp)
                    feed.paused = True
                    self._metrics.paused_partitions.set(self.paused)
            now = time.monotonic()
            if now - self._observed_at >= _OBSERVE_EVERY:
                self._observed_at = now
                await self._observe()
            check()

    async def _getmany(self) -> dict[TopicPartition, list[Any]]:
        with kafka_errors("fetching"):
            batches: dict[TopicPartition, list[Any]] = await self._consumer.getmany(
                timeout_ms=_POLL_TIMEOUT_MS, max_records=self._max_batch
            )
        return batches

    async def _observe(self) -> None:
        """Hand each feed what the broker said about its partition in the last fetches."""
        consumer = self._consumer
        assigned = consumer.assignment()
        for tp, feed in list(self.feeds.items()):  # a rebalance may change it meanwhile
            if tp not in assigned or self.feeds.get(tp) is not feed:
                continue
            polled_ms = consumer.last_poll_timestamp(tp)
            if polled_ms is None or not feed.is_news(polled_ms / 1000):
                continue
            end = consumer.last_stable_offset(tp) if self._read_committed else None
            if end is None:
                end = consumer.highwater(tp)
            position = feed.fed_until
            if end is not None and (position is None or position < end):
                # Behind, or past control records the fetch skipped: ask the consumer.
                position = await consumer.position(tp)
            feed.observe(
                responded_at=polled_ms / 1000,
                end_offset=end,
                position=-1 if position is None else position,
            )
        now = time.time()
        feeds = list(self.feeds.values())
        if any(feed.unanswered(now) for feed in feeds):
            for feed in feeds:
                feed.unconfirmed()

    # -- lag ----------------------------------------------------------------------------
    def update_lag(self) -> tuple[int, float]:
        """Refresh per-partition lag gauges; return total lag in events and max in seconds."""
        now = time.time()
        total = 0
        worst = 0.0
        for feed in self.feeds.values():
            end, position = feed.end_offset, feed.processed_until
            pm = self._metrics.bind_partition(feed.tp.partition)
            pm.buffer_depth.set(feed.depth)
            if end is None or position is None:
                continue
            lag = max(0, end - position)
            seconds = 0.0
            if lag and feed.last_event_time is not None:
                seconds = max(0.0, now - feed.last_event_time / 1000)
            pm.lag_events.set(lag)
            pm.lag_seconds.set(seconds)
            total += lag
            worst = max(worst, seconds)
        return total, worst
