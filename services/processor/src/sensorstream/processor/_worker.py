"""One assigned partition's worker: a task that processes its records in strict offset order.

The fetch loop fills the partition's :class:`~._fetching.PartitionFeed`; the worker
takes its records in chunks and, per chunk:

1. runs the pure pipeline (decode, window, alert, route) -> ``BatchResult``;
2. calls the user's handler once per valid event, in order (``_handling``), which may
   add dead letters of its own;
3. sends the chunk's outputs through its sink and waits until they are safely written;
4. only then marks the chunk done and hands the sink a :class:`~._delivery.Checkpoint`:
   ``min(next, commit_floor)`` with a replay mark (``next`` and the watermark) as
   metadata, where ``commit_floor`` is the smallest offset an open window still needs.
   A restart replays from there and emits nothing below the mark.

When the partition is idle — the broker has confirmed for ``--idle-timeout`` that it
is caught up and silent (``PartitionFeed.quiet_for``), and nothing is buffered — the
worker closes every open window and sends those aggregates, then checkpoints again.

While tracing is on (``sensorstream.runtime.tracing``), each chunk (and each idle close)
gets its spans from ``_tracing.PartitionTracing``, opened once the pipeline has run (but
timed from the chunk's start) and ended once its outputs are written; with tracing off
the worker does nothing for it.

A worker touches only its own pipeline, feed (its consuming side) and sink; it knows
nothing about the delivery mode. It runs as a task of the service's TaskGroup: a
failure it cannot get past is raised as one :class:`~sensorstream.schema.FatalError`
naming the partition and offset, which stops the service; losing the partition to
another owner (:class:`~sensorstream.schema.OwnershipLostError`) just ends the task.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import TopicPartition

from sensorstream.runtime import tracing
from sensorstream.schema import FatalError, OwnershipLostError

from ._dead_letters import OutputRecord
from ._delivery import Checkpoint, PartitionSink, ReplayMark
from ._fetching import PartitionFeed
from ._handling import HandlerRunner
from ._metrics import PartitionMetrics, ProcessorMetrics
from ._pipeline import BatchResult, PartitionPipeline
from ._tracing import PartitionTracing

__all__ = ["PartitionWorker", "WorkerOptions"]

log = structlog.get_logger("sensorstream.processor")

# How often a worker with nothing to do wakes up to look for idleness (and, in
# exactly-once mode, let its sink commit the transaction).
_IDLE_TICK = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """The knobs of a worker (from the settings)."""

    max_batch: int = 5000
    idle_timeout: float = 30.0
    """Seconds of broker-confirmed silence after which the partition's windows close."""


class PartitionWorker:
    """Processes one partition's records in offset order; see the module doc."""

    def __init__(
        self,
        tp: TopicPartition,
        pipeline: PartitionPipeline,
        *,
        feed: PartitionFeed,
        sink: PartitionSink,
        options: WorkerOptions,
        metrics: ProcessorMetrics,
        handler: HandlerRunner | None = None,
    ) -> None:
        self.tp = tp
        self.pipeline = pipeline
        self.feed = feed
        self._sink = sink
        self._options = options
        self._metrics = metrics
        self._pmetrics: PartitionMetrics = metrics.bind_partition(tp.partition)
        self._handler = handler
        self._tracing = PartitionTracing(tp.topic, tp.partition) if tracing.enabled else None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.next_offset: int | None = None
        """Offset after the last record whose outputs are safely written."""
        self.checkpoint: Checkpoint | None = None
        """The last checkpoint handed to the sink."""
        self.processed = 0
        self.cancelled = False
        """True if stop() had to cancel a chunk mid-way (its outputs may be partly sent)."""

    # -- lifecycle ------------------------------------------------------------------
    def start(self, spawn: Any) -> None:
        """Run the worker as a task made by ``spawn`` (the TaskGroup's create_task)."""
        self._task = spawn(self.run(), name=f"worker-{self.tp.partition}")

    async def stop(self, grace: float) -> bool:
        """Finish the chunk in progress (up to ``grace`` seconds), drop the rest, stop.

        Returns True if the worker stopped between chunks (cleanly), False if it had to
        be cancelled mid-chunk. Dropped records were never marked done, so they are
        fetched again by whoever owns the partition next: nothing is lost.
        """
        self._stopping = True
        self.feed.wake()
        task = self._task
        if task is not None and not task.done():
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
        self.feed.clear()
        self._metrics.unbind_partition(self.tp.partition)
        return not self.cancelled

    def cancel(self) -> None:
        """Cancel the task at once (a shutdown that ran out of time)."""
        if self._task is not None:
            self.cancelled = True
            self._task.cancel()

    async def run(self) -> None:
        """The task body; see the module doc for what it raises."""
        try:
            await self._loop()
        except OwnershipLostError as exc:
            log.warning(
                "partition_lost",
                partition=self.tp.partition,
                offset=self.next_offset,
                error=str(exc),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise FatalError(
                f"processing partition {self.tp.partition} failed at offset "
                f"{self.next_offset}: {exc}"
            ) from exc

    async def _loop(self) -> None:
        options = self._options
        feed = self.feed
        sink = self._sink
        last_idle_check = time.monotonic()
        while not self._stopping:
            await feed.wait(_IDLE_TICK)
            if self._stopping:
                break
            records = feed.take(options.max_batch)
            if records:
                await self._process(records)
            else:
                now = time.monotonic()
                if now - last_idle_check >= _IDLE_TICK:
                    last_idle_check = now
                    if self.pipeline.open_windows and feed.quiet_for() >= options.idle_timeout:
                        await self._close_idle()
            if self.checkpoint is not None:
                await sink.checkpoint(self.checkpoint)

    async def _process(self, records: list[Any]) -> None:
        started = time.time_ns() if self._tracing is not None else 0
        result = self.pipeline.process(records, time.time())
        outputs = result.outputs
        truncated = result.truncated
        if self._handler is not None and result.valid:
            outcome = await self._handler.run(result.valid)
            if outcome.dead_letters:
                outputs = [*outputs, *outcome.dead_letters]
                truncated += outcome.truncated
                self._count_handler_dead_letters(len(outcome.dead_letters))
        await self._send(records, result, outputs, started)
        # Done: the outputs are acknowledged (or in the open transaction).
        self.next_offset = records[-1].offset + 1
        self.processed += len(records)
        self._account(result, len(records), truncated)
        self.checkpoint = self._take_checkpoint()
        self.feed.done(len(records), self.next_offset, result.event_time_max)

    async def _send(
        self, records: list[Any], result: BatchResult, outputs: list[OutputRecord], started: int
    ) -> None:
        """Send the outputs of ``records`` (processing began at ``started``, in ns, if
        tracing is on) and wait until they are safely written."""
        if self._tracing is not None:
            await self._send_traced(self._tracing, records, result, outputs, started)
        elif outputs:
            await self._sink.send(outputs)

    async def _send_traced(
        self,
        spans: PartitionTracing,
        records: list[Any],
        result: BatchResult,
        outputs: list[OutputRecord],
        started: int,
    ) -> None:
        """``sink.send(outputs)`` within the chunk's spans (tracing on)."""
        counts = {
            "aggregates": result.aggregates,
            "alerts": result.alerts_emitted,
            "dead_letters": len(outputs) - result.aggregates - result.alerts_emitted,
        }
        chunk = spans.begin(records, result.origins, outputs, counts, started)
        try:
            if outputs:
                await self._sink.send(outputs)
        except BaseException as exc:
            chunk.end(exc)
            raise
        chunk.end()

    async def _close_idle(self) -> None:
        started = time.time_ns() if self._tracing is not None else 0
        result = self.pipeline.close_idle()
        if result.outputs:
            await self._send([], result, result.outputs, started)
            self._account(result, 0, 0)
            log.info(
                "partition_idle",
                partition=self.tp.partition,
                closed_windows=result.aggregates,
                quiet_for=round(self.feed.quiet_for(), 1),
            )
        if self.next_offset is not None:
            self.checkpoint = self._take_checkpoint()

    def _take_checkpoint(self) -> Checkpoint:
        """What may be committed now: called only between chunks, never mid-chunk."""
        next_offset = self.next_offset
        assert next_offset is not None
        pipeline = self.pipeline
        floor = pipeline.commit_floor()
        offset = next_offset if floor is None else min(next_offset, floor)
        # Never lower the replay mark below what an earlier owner already emitted.
        mark = ReplayMark(max(next_offset, pipeline.replay_until), pipeline.watermark)
        return Checkpoint(offset, mark)

    def _count_handler_dead_letters(self, count: int) -> None:
        self._metrics.dead_letters["handler_failed"].inc(count)
        self._metrics.dead_lettered.inc(count)

    def _account(self, result: BatchResult, consumed: int, truncated: int) -> None:
        metrics = self._metrics
        if consumed:
            self._pmetrics.consumed.inc(consumed)
        if result.ok:
            metrics.ok.inc(result.ok)
        if result.invalid:
            metrics.invalid.inc(result.invalid)
        if result.late:
            metrics.late.inc(result.late)
        if result.dropped:
            metrics.dropped.inc(result.dropped)
        if result.replayed:
            metrics.replayed.inc(result.replayed)
        if result.dead_letters:
            total = 0
            for reason, count in result.dead_letters.items():
                metrics.dead_letters[reason].inc(count)
                total += count
            metrics.dead_lettered.inc(total)
        if truncated:
            metrics.dead_letters_truncated.inc(truncated)
        if result.aggregates:
            metrics.aggregates_emitted.inc(result.aggregates)
        for kind, count in result.alerts.items():
            metrics.alerts[kind].inc(count)
        if result.event_time_max is not None and result.event_time_min is not None:
            now = time.time()
            metrics.processing_latency.observe(max(0.0, now - result.event_time_min / 1000))
            metrics.processing_latency.observe(max(0.0, now - result.event_time_max / 1000))
