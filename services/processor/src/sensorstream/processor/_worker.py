"""One assigned partition's worker: a task that processes its records in strict offset order.

The fetch loop (``_consumer``) appends fetched records to the worker's bounded
buffer; the worker takes them in chunks and, per chunk:

1. runs the pure pipeline (decode, window, alert, route) -> ``BatchResult``;
2. calls the user's handler once per valid event, in order, retrying with backoff and
   dead-lettering an event whose retries run out;
3. produces the chunk's outputs and waits until Kafka acknowledged them;
4. only then marks the chunk done: ``next_offset`` moves past its last record.

What may be committed: ``min(next, commit_floor)`` with a :class:`ReplayMark` (``next``
and the watermark) as metadata, where ``commit_floor`` is the smallest offset an open window
still needs; a restart replays from there and emits nothing below the metadata.

A worker touches only its own pipeline, buffer and output sink. It never commits
in at-least-once mode (the consumer's committer does); in exactly-once mode it owns a
transactional producer and commits its own transactions, so sends and commits of one
partition never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition

from sensorstream.schema import DeadLetterReason, PoisonEventError, SensorReading

from ._metrics import PartitionMetrics, ProcessorMetrics
from ._pipeline import BatchResult, OutputRecord, PartitionPipeline, dead_letter
from ._windows import NO_WATERMARK
from .handler import Handler, HandlerContext

__all__ = ["OutputSink", "PartitionWorker", "ReplayMark", "WorkerOptions"]

log = structlog.get_logger("sensorstream.processor")

# How often a worker with nothing to do wakes up to close idle windows (and, in
# exactly-once mode, commit its transaction).
_IDLE_TICK = 0.5


@dataclass(frozen=True, slots=True)
class ReplayMark:
    """What a commit's metadata carries besides the offset.

    ``until``: the offset up to which outputs were acknowledged — a restart replays the
    records below it only to rebuild state. ``watermark``: the partition's watermark at
    that point, which the rebuilt pipeline starts from, so a window closed before the
    restart (by event time or by an idle close) is not reopened by the replay.
    Encoded as ``"until:watermark"``; a bare ``"until"`` (older commits) is accepted.
    """

    until: int = -1
    watermark: int = NO_WATERMARK

    def encode(self) -> str:
        return f"{self.until}:{self.watermark}"

    @classmethod
    def decode(cls, text: str) -> ReplayMark:
        """Parse commit metadata; raise ``ValueError`` if it is not ours."""
        until, _, watermark = text.partition(":")
        return cls(int(until), int(watermark) if watermark else NO_WATERMARK)


class OutputSink(Protocol):
    """Where a worker's outputs go; ``send`` returns once they are safely written."""

    async def send(self, outputs: list[OutputRecord]) -> None: ...


class TransactionalSink(OutputSink, Protocol):
    async def commit(self, offset: int, metadata: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """The knobs of a worker (from the settings)."""

    max_batch: int = 5000
    partition_buffer: int = 20_000
    handler_retries: int = 3
    handler_backoff: float = 0.2
    commit_interval: float = 1.0
    instance: str = "local"
    dlq_topic: str = "sensor-data.dlq"


class PartitionWorker:
    """Processes one partition's records in offset order; see the module docstring."""

    def __init__(
        self,
        tp: TopicPartition,
        pipeline: PartitionPipeline,
        *,
        sink: OutputSink,
        options: WorkerOptions,
        metrics: ProcessorMetrics,
        handler: Handler | None = None,
        on_drained: Callable[[TopicPartition], None] | None = None,
        transactional: bool = False,
    ) -> None:
        self.tp = tp
        self.pipeline = pipeline
        self._sink = sink
        self._options = options
        self._metrics = metrics
        self._pmetrics: PartitionMetrics = metrics.bind_partition(tp.partition)
        self._handler = handler
        self._on_drained = on_drained
        self._transactional = transactional
        self._chunks: deque[Sequence[Any]] = deque()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.depth = 0
        """Records fetched but not yet processed."""
        self.paused = False
        """Set by the fetch loop when it paused this partition; the worker resumes it."""
        self.next_offset: int | None = None
        """Offset after the last record whose outputs are acknowledged."""
        self.fed_until: int | None = None
        """Offset after the last record handed to this worker (see ``feed``)."""
        self.last_event_time: int | None = None
        """Event time (epoch ms) of the newest processed valid event (lag in seconds)."""
        self.committed: tuple[int, str] | None = None
        """The last (offset, metadata) committed for this partition."""
        self.processed = 0
        self.failed: BaseException | None = None
        self.cancelled = False
        """True if stop() had to cancel a chunk mid-way (its outputs may be partly sent)."""
        self._last_idle_check = time.monotonic()
        self._last_txn_commit = time.monotonic()

    # -- fed by the fetch loop ------------------------------------------------------
    def feed(self, records: Sequence[Any]) -> None:
        """Queue fetched records (in offset order) for processing.

        An offset is fed at most once: records below the end of what was already fed
        (a fetch overlapping an earlier one) are dropped, so no reading can be counted
        twice in a window, whatever the client does around seeks and rebalances.
        """
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
        self._wakeup.set()

    @property
    def sink(self) -> OutputSink:
        return self._sink

    @property
    def partition_metrics(self) -> PartitionMetrics:
        return self._pmetrics

    @property
    def buffer_full(self) -> bool:
        return self.depth >= self._options.partition_buffer

    # -- commit bookkeeping ---------------------------------------------------------
    def committable(self) -> tuple[int, str] | None:
        """(offset, metadata) safe to commit now, or None if nothing was processed yet."""
        next_offset = self.next_offset
        if next_offset is None:
            return None
        floor = self.pipeline.commit_floor()
        offset = next_offset if floor is None else min(next_offset, floor)
        # Never lower the replay mark below what an earlier owner already emitted.
        mark = ReplayMark(max(next_offset, self.pipeline.replay_until), self.pipeline.watermark)
        return offset, mark.encode()

    def needs_commit(self) -> tuple[int, str] | None:
        """What to commit if it differs from the last commit, else None."""
        current = self.committable()
        if current is None or current == self.committed:
            return None
        return current

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"worker-{self.tp.partition}")

    async def stop(self, grace: float) -> None:
        """Finish the chunk in progress (up to ``grace`` seconds), drop the rest, stop.

        Dropped records were never marked done, so they are fetched again by whoever
        owns the partition next: nothing is lost.
        """
        self._stopping = True
        self._wakeup.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            log.warning(
                "worker_cancelled",
                partition=self.tp.partition,
                next_offset=self.next_offset,
                grace=grace,
            )
            self.cancelled = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._chunks.clear()
        self.depth = 0
        self._metrics.unbind_partition(self.tp.partition)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = exc
            log.error(
                "worker_failed",
                partition=self.tp.partition,
                offset=self.next_offset,
                error=str(exc),
                exc_info=True,
            )

    async def _loop(self) -> None:
        options = self._options
        while not self._stopping:
            if not self._chunks:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=_IDLE_TICK)
                if self._stopping:
                    break
            if self._chunks:
                await self._process(self._take(options.max_batch))
            now = time.monotonic()
            # Idle windows are judged only when caught up: while records wait in the
            # buffer (a slow handler, a backlog) the sensors are not silent, we are late.
            if not self._chunks and now - self._last_idle_check >= _IDLE_TICK:
                self._last_idle_check = now
                await self._close_idle()
            if self._transactional and now - self._last_txn_commit >= options.commit_interval:
                await self.commit_transaction()

    def _take(self, limit: int) -> list[Any]:
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

    async def _process(self, records: list[Any]) -> None:
        result = self.pipeline.process(records, time.time())
        if self._handler is not None and result.valid:
            await self._call_handler(result)
        if result.outputs:
            await self._sink.send(result.outputs)
        # Done: the outputs are acknowledged (or in the open transaction).
        self.next_offset = records[-1].offset + 1
        self.depth -= len(records)
        self.processed += len(records)
        self._account(result, len(records))
        if self.paused and self.depth < self._options.partition_buffer // 2:
            self.paused = False
            if self._on_drained is not None:
                self._on_drained(self.tp)

    async def _close_idle(self) -> None:
        result = self.pipeline.close_idle(time.time())
        if result.outputs:
            await self._sink.send(result.outputs)
            self._account(result, 0)

    def _account(self, result: BatchResult, consumed: int) -> None:
        metrics = self._metrics
        if consumed:
            self._pmetrics.consumed.inc(consumed)
        if result.ok:
            metrics.ok.inc(result.ok)
        if result.invalid:
            metrics.invalid.inc(result.invalid)
        if result.late:
            metrics.late.inc(result.late)
        if result.replayed:
            metrics.replayed.inc(result.replayed)
        if result.dead_letters:
            total = 0
            for reason, count in result.dead_letters.items():
                metrics.dead_letters[reason].inc(count)
                total += count
            metrics.dead_lettered.inc(total)
        if result.aggregates:
            metrics.aggregates_emitted.inc(result.aggregates)
        for kind, count in result.alerts.items():
            metrics.alerts[kind].inc(count)
        if result.event_time_max is not None and result.event_time_min is not None:
            now = time.time()
            metrics.processing_latency.observe(max(0.0, now - result.event_time_min / 1000))
            metrics.processing_latency.observe(max(0.0, now - result.event_time_max / 1000))
            if self.last_event_time is None or result.event_time_max > self.last_event_time:
                self.last_event_time = result.event_time_max
        self._pmetrics.buffer_depth.set(self.depth)

    async def _call_handler(self, result: BatchResult) -> None:
        handler = self._handler
        assert handler is not None
        options = self._options
        observe = self._metrics.handler_duration.observe
        instance = options.instance
        for record, reading in result.valid:
            context = HandlerContext(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=record.timestamp,
                key=record.key,
                headers=record.headers,
                instance=instance,
            )
            attempt = 0
            while True:
                started = time.perf_counter()
                try:
                    await handler.handle(reading, context)
                except PoisonEventError as exc:
                    observe(time.perf_counter() - started)
                    self._dead_letter_handler_failure(record, reading, exc, result, attempt)
                    break
                except Exception as exc:
                    observe(time.perf_counter() - started)
                    if attempt >= options.handler_retries:
                        self._dead_letter_handler_failure(record, reading, exc, result, attempt)
                        break
                    delay = options.handler_backoff * (2**attempt)
                    attempt += 1
                    self._metrics.retried.inc()
                    log.warning(
                        "handler_failed",
                        partition=record.partition,
                        offset=record.offset,
                        attempt=attempt,
                        retry_in=round(delay, 3),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    await asyncio.sleep(delay)
                else:
                    observe(time.perf_counter() - started)
                    break

    def _dead_letter_handler_failure(
        self,
        record: Any,
        reading: SensorReading,
        exc: BaseException,
        result: BatchResult,
        attempts: int,
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "event_dead_lettered",
            partition=record.partition,
            offset=record.offset,
            reason=DeadLetterReason.HANDLER_FAILED.value,
            sensor_id=reading.sensor_id,
            retries=attempts,
            error=error,
        )
        result.outputs.append(
            dead_letter(
                record,
                reason=DeadLetterReason.HANDLER_FAILED,
                error=error,
                instance=self._options.instance,
                dlq_topic=self._options.dlq_topic,
            )
        )
        result.dead_letters[DeadLetterReason.HANDLER_FAILED.value] += 1

    # -- exactly-once ---------------------------------------------------------------
    async def commit_transaction(self) -> bool:
        """Commit the open transaction with this partition's offset (exactly-once mode)."""
        self._last_txn_commit = time.monotonic()
        pending = self.needs_commit()
        if pending is None:
            return False
        sink: Any = self._sink
        started = time.perf_counter()
        await sink.commit(*pending)
        self._metrics.commit_latency.observe(time.perf_counter() - started)
        self._metrics.commits_ok.inc()
        self.committed = pending
        return True
