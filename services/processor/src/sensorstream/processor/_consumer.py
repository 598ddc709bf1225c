"""The consumer-group side of the processor: fetch loop, rebalance listener, commits.

Tasks (all on one event loop):

* the **fetch loop** calls ``getmany`` and hands each partition's records to its
  :class:`PartitionWorker`; a partition whose buffer is full is paused and resumed
  by its worker once it drained below half. Because fetching never waits for a
  worker, a slow handler never makes this member miss ``max_poll_interval``;
* the **committer** (at-least-once) commits every worker's committable offset each
  ``commit_interval``; in exactly-once mode each worker commits its own transaction;
* the **rebalance listener** stops and commits revoked partitions' workers, and
  starts workers for assigned partitions from their committed offset and replay mark.

A commit that fails (the group is rebalancing, this member was fenced by a newer
generation) is logged and counted, never raised and never retried in a hot loop: the
partition's next owner resumes from the last commit that succeeded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from sensorstream.schema import FatalError, RetriableError

from ._metrics import ProcessorMetrics
from ._outputs import OutputProducer, PartitionFencedError, TransactionalOutput
from ._pipeline import PartitionPipeline, PipelineConfig
from ._worker import OutputSink, PartitionWorker, ReplayMark, WorkerOptions
from .handler import Handler
from .settings import ProcessorSettings

__all__ = ["ProcessorConsumer"]

log = structlog.get_logger("sensorstream.processor")

_POLL_TIMEOUT_MS = 100
_FETCH_FAILURES_BEFORE_FATAL = 30


class ProcessorConsumer:
    """Owns the AIOKafkaConsumer, the partition workers and the commit cycle."""

    def __init__(
        self,
        settings: ProcessorSettings,
        *,
        client_options: dict[str, Any],
        admin: AIOKafkaAdminClient,
        pipeline_config: PipelineConfig,
        metrics: ProcessorMetrics,
        handler: Handler | None = None,
    ) -> None:
        self._settings = settings
        self._options = client_options
        self._admin = admin
        self._pipeline_config = pipeline_config
        self._metrics = metrics
        self._handler = handler
        self._exactly_once = settings.guarantee == "exactly_once"
        self._worker_options = WorkerOptions(
            max_batch=settings.max_batch,
            partition_buffer=settings.partition_buffer,
            handler_retries=settings.handler_retries,
            handler_backoff=settings.handler_backoff,
            commit_interval=settings.commit_interval,
            instance=settings.instance_id,
            dlq_topic=settings.dlq_topic,
        )
        self.consumer = AIOKafkaConsumer(
            **client_options,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self._exactly_once else "read_uncommitted",
            max_poll_records=settings.max_batch,
            fetch_min_bytes=settings.fetch_min_bytes,
            fetch_max_wait_ms=round(settings.fetch_max_wait * 1000),
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
            max_poll_interval_ms=int(settings.max_poll_interval * 1000),
            rebalance_timeout_ms=int(settings.max_poll_interval * 1000),
        )
        self._producer: OutputProducer | None = None
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self._commit_lock = asyncio.Lock()
        self._revoked_at: float | None = None
        self.assigned_once = False
        self.paused: set[TopicPartition] = set()
        self.fatal: BaseException | None = None
        """Set when a rebalance callback failed in a way the member cannot recover from."""

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        if not self._exactly_once:
            self._producer = OutputProducer(self._options)
            await self._producer.start()
        try:
            await self.consumer.start()
        except KafkaError as exc:
            raise RetriableError(f"cannot start the consumer: {exc}") from exc
        self.consumer.subscribe([self._settings.topic], listener=_Listener(self))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch until ``stop`` is set (or a worker fails for good)."""
        committer = None
        if not self._exactly_once:
            committer = asyncio.create_task(self._commit_periodically(stop), name="committer")
        try:
            await self._fetch_loop(stop)
        finally:
            if committer is not None:
                committer.cancel()
                await asyncio.gather(committer, return_exceptions=True)

    async def shutdown(self, grace: float) -> None:
        """Drain and commit every worker, leave the group, stop the clients."""
        await self._stop_workers(list(self.workers), grace)
        try:
            await self.consumer.stop()  # leaves the group
        finally:
            if self._producer is not None:
                await self._producer.stop()
        log.info("consumer_stopped")

    # -- fetching -------------------------------------------------------------------
    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        consumer = self.consumer
        workers = self.workers
        failures = 0
        while not stop.is_set():
            try:
                batches = await consumer.getmany(
                    timeout_ms=_POLL_TIMEOUT_MS, max_records=self._settings.max_batch
                )
            except KafkaError as exc:
                failures += 1
                log.warning("fetch_failed", error=str(exc) or type(exc).__name__, attempt=failures)
                if failures >= _FETCH_FAILURES_BEFORE_FATAL:
                    raise FatalError(
                        f"fetching from {self._settings.topic!r} failed {failures} times in a "
                        f"row (last error: {exc}); check the broker and the ACLs of this client"
                    ) from exc
                await asyncio.sleep(min(0.1 * failures, 2.0))
                continue
            failures = 0
            for tp, records in batches.items():
                worker = workers.get(tp)
                if worker is None:
                    # aiokafka marks a partition fetchable before on_assigned has read
                    # its committed offset and started the worker. If it is ours, give
                    # the records back (rewind): on_assigned's seek or the worker gets
                    # them again; without a commit they would otherwise be skipped.
                    if tp in consumer.assignment():
                        consumer.seek(tp, records[0].offset)
                    continue
                worker.feed(records)
                if worker.buffer_full and not worker.paused:
                    consumer.pause(tp)
                    worker.paused = True
                    self.paused.add(tp)
            self._metrics.paused_partitions.set(len(self.paused))
            self._check_workers()

    def _check_workers(self) -> None:
        if self.fatal is not None:
            raise FatalError(f"taking over partitions failed: {self.fatal}") from self.fatal
        for worker in self.workers.values():
            failure = worker.failed
            if failure is None or isinstance(failure, PartitionFencedError):
                continue
            raise FatalError(
                f"processing partition {worker.tp.partition} failed at offset "
                f"{worker.next_offset}: {failure}"
            ) from failure

    def _resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)
        if tp in self.workers:
            self.consumer.resume(tp)

    # -- commits (at-least-once) ----------------------------------------------------
    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        interval = self._settings.commit_interval
        while not stop.is_set():
            await asyncio.sleep(interval)
            await self.commit(self.workers.values())

    async def commit(self, workers: Iterable[PartitionWorker]) -> bool:
        """Commit what ``workers`` finished; False (logged, counted) if the commit failed."""
        pending = {w.tp: (w, c) for w in workers if (c := w.needs_commit()) is not None}
        if not pending:
            return True
        offsets = {tp: commit for tp, (_, commit) in pending.items()}
        async with self._commit_lock:
            started = time.perf_counter()
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:
                # CommitFailedError / RebalanceInProgressError / IllegalGeneration and
                # friends: the group moved on. The next owner resumes from the last
                # successful commit, so this is a count and a log line, not a crash.
                self._metrics.commits_failed.inc()
                log.warning(
                    "commit_failed",
                    partitions=sorted(tp.partition for tp in offsets),
                    offsets={str(tp.partition): offset for tp, (offset, _) in offsets.items()},
                    error=f"{type(exc).__name__}: {exc}",
                )
                return False
            self._metrics.commit_latency.observe(time.perf_counter() - started)
            self._metrics.commits_ok.inc()
        for worker, commit in pending.values():
            worker.committed = commit
        log.debug(
            "offsets_committed", offsets={str(tp.partition): o for tp, (o, _) in offsets.items()}
        )
        return True

    # -- rebalancing ----------------------------------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoked_at = time.monotonic()
        mine = [tp for tp in revoked if tp in self.workers]
        if not mine:
            return
        # The rebalance waits for us: finish in-flight chunks only, bounded well below
        # the rebalance timeout; buffered records are fetched again by the next owner.
        grace = min(self._settings.max_poll_interval / 2, self._settings.shutdown_timeout / 2)
        await self._stop_workers(mine, grace)
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in mine))

    async def _stop_workers(self, tps: list[TopicPartition], grace: float) -> None:
        workers = [self.workers[tp] for tp in tps if tp in self.workers]
        if not workers:
            return
        await asyncio.gather(*(w.stop(grace) for w in workers))
        if self._exactly_once:
            await asyncio.gather(*(self._close_transactional(w) for w in workers))
        else:
            await self.commit(workers)
        for worker in workers:
            self.workers.pop(worker.tp, None)
            self.paused.discard(worker.tp)
        self._metrics.assigned_partitions.set(len(self.workers))
        self._metrics.paused_partitions.set(len(self.paused))

    async def _close_transactional(self, worker: PartitionWorker) -> None:
        sink = worker_sink(worker)
        try:
            # A chunk cancelled mid-way may have part of its outputs in the open
            # transaction without its offsets: abort (in stop()) rather than commit.
            if worker.failed is None and not worker.cancelled:
                await worker.commit_transaction()
        except (FatalError, KafkaError) as exc:
            self._metrics.commits_failed.inc()
            log.warning(
                "commit_failed",
                partitions=[worker.tp.partition],
                offset=worker.next_offset,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            await sink.stop()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        new = sorted((tp for tp in assigned if tp not in self.workers), key=lambda t: t.partition)
        sinks: dict[TopicPartition, Any] = {}
        if self._exactly_once:
            # Fence previous owners first, so the offsets read below are final.
            for tp in new:
                sinks[tp] = TransactionalOutput(
                    self._options, group_id=self._settings.group_id, tp=tp
                )
            await asyncio.gather(*(sink.start() for sink in sinks.values()))
        committed = await self._committed(new)
        for tp in new:
            offset, mark = committed.get(tp, (-1, ReplayMark()))
            if offset >= 0:
                self.consumer.seek(tp, offset)
            pipeline = PartitionPipeline(
                tp.topic,
                tp.partition,
                self._pipeline_config,
                replay_until=mark.until,
                watermark=mark.watermark,
                collect_valid=self._handler is not None,
            )
            sink: OutputSink = sinks[tp] if self._exactly_once else self._require_producer()
            worker = PartitionWorker(
                tp,
                pipeline,
                sink=sink,
                options=self._worker_options,
                metrics=self._metrics,
                handler=self._handler,
                on_drained=self._resume,
                transactional=self._exactly_once,
            )
            if offset >= 0:
                worker.committed = (offset, mark.encode())
            self.workers[tp] = worker
            worker.start()
        self.assigned_once = True
        self._metrics.assigned_partitions.set(len(self.workers))
        self._metrics.rebalances.inc()
        if self._revoked_at is not None:
            self._metrics.rebalance_duration.observe(time.monotonic() - self._revoked_at)
            self._revoked_at = None
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in self.workers),
            resumed_from={str(tp.partition): committed.get(tp, (-1, -1))[0] for tp in new},
        )

    def _require_producer(self) -> OutputProducer:
        assert self._producer is not None
        return self._producer

    async def _committed(
        self, tps: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, ReplayMark]]:
        """Committed offset and replay mark (from the commit metadata) per partition."""
        if not tps:
            return {}
        try:
            offsets = await self._admin.list_consumer_group_offsets(
                self._settings.group_id, partitions=tps
            )
        except KafkaError as exc:
            # Fall back to the consumer's own committed position (no replay mark):
            # at worst an aggregate is emitted twice, never lost.
            log.warning("committed_offsets_unavailable", error=str(exc))
            return {}
        result: dict[TopicPartition, tuple[int, ReplayMark]] = {}
        for tp, meta in offsets.items():
            if meta.offset is None or meta.offset < 0:
                continue
            mark = ReplayMark()
            if meta.metadata:
                try:
                    mark = ReplayMark.decode(meta.metadata)
                except ValueError:
                    log.warning(
                        "commit_metadata_ignored", partition=tp.partition, metadata=meta.metadata
                    )
            result[tp] = (meta.offset, mark)
        return result

    # -- lag ------------------------------------------------------------------------
    def update_lag(self) -> tuple[int, float]:
        """Refresh per-partition lag gauges; return total lag in events and max in seconds."""
        now = time.time()
        total = 0
        worst = 0.0
        consumer = self.consumer
        for tp, worker in self.workers.items():
            end = consumer.last_stable_offset(tp) if self._exactly_once else consumer.highwater(tp)
            position = worker.next_offset
            if end is None or position is None:
                continue
            lag = max(0, end - position)
            seconds = 0.0
            if lag and worker.last_event_time is not None:
                seconds = max(0.0, now - worker.last_event_time / 1000)
            pm = worker.partition_metrics
            pm.lag_events.set(lag)
            pm.lag_seconds.set(seconds)
            pm.buffer_depth.set(worker.depth)
            total += lag
            worst = max(worst, seconds)
        self._metrics.open_windows.set(sum(w.pipeline.open_windows for w in self.workers.values()))
        return total, worst


def worker_sink(worker: PartitionWorker) -> TransactionalOutput:
    sink = worker.sink
    assert isinstance(sink, TransactionalOutput)
    return sink


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the :class:`ProcessorConsumer`.

    aiokafka awaits both callbacks inside the rebalance: ``on_partitions_revoked``
    before rejoining (the generation is still valid, so commits succeed), and
    ``on_partitions_assigned`` after the new assignment, before fetching starts.
    Exceptions are logged and swallowed so a rebalance never kills the fetch loop.
    """

    def __init__(self, owner: ProcessorConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._owner.on_revoked(set(revoked))
        except Exception:
            log.exception("revocation_failed", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._owner.on_assigned(set(assigned))
        except Exception as exc:
            log.exception("assignment_failed", partitions=sorted(tp.partition for tp in assigned))
            self._owner.fatal = exc
