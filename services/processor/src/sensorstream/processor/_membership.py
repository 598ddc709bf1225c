"""Group membership: which partitions this member works on, and where each resumes.

:class:`GroupMembership` is the consumer's rebalance listener. aiokafka awaits both
callbacks inside the rebalance, on its own task:

* ``on_partitions_revoked`` runs before rejoining, while the generation is still valid:
  each revoked partition's worker finishes its chunk in progress (bounded well below
  the rebalance timeout), its feed is dropped (buffered records are fetched again by
  the next owner), and the delivery guarantee makes the final commit (or abort).
* ``on_partitions_assigned`` runs after the new assignment, before fetching starts:
  for each new partition the guarantee opens a sink (exactly-once: a transactional
  producer, which fences the previous owner *first*), the committed offset and replay
  mark are read from the group (``list_consumer_group_offsets``, so the metadata comes
  with them), the consumer seeks there, and a pipeline, feed and worker are created and
  the worker started — all without an await in between, so the fetch loop never feeds
  a partition half set up.

A restored watermark is held to the event-time bound (``PipelineConfig.trusted_watermark``):
one that only a far-future clock could have set is dropped, so a bad one persisted by
an earlier version heals on restart. Exceptions in a callback are logged and kept;
the fetch loop raises them (:meth:`GroupMembership.check`), since aiokafka would only
log them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from sensorstream.runtime import RetryPolicy, kafka_errors, retry
from sensorstream.schema import FatalError, SensorstreamError

from ._delivery import Checkpoint, DeliveryGuarantee, ReplayMark
from ._fetching import Fetcher
from ._handling import HandlerRunner
from ._metrics import ProcessorMetrics
from ._pipeline import PartitionPipeline, PipelineConfig
from ._worker import PartitionWorker, WorkerOptions

__all__ = ["GroupMembership"]

log = structlog.get_logger("sensorstream.processor")


class GroupMembership(ConsumerRebalanceListener):  # type: ignore[misc]
    """The partitions this member owns, their workers, and their hand-over; see module doc."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        admin: AIOKafkaAdminClient,
        group_id: str,
        guarantee: DeliveryGuarantee,
        fetcher: Fetcher,
        pipeline_config: PipelineConfig,
        worker_options: WorkerOptions,
        handler_runner: Callable[[PartitionPipeline], HandlerRunner] | None,
        metrics: ProcessorMetrics,
        spawn: Callable[..., asyncio.Task[Any]],
        revoke_grace: float,
        restore_policy: RetryPolicy,
    ) -> None:
        self._consumer = consumer
        self._admin = admin
        self._group_id = group_id
        self._guarantee = guarantee
        self._fetcher = fetcher
        self._pipeline_config = pipeline_config
        self._worker_options = worker_options
        self._handler_runner = handler_runner
        self._metrics = metrics
        self._spawn = spawn
        self._revoke_grace = revoke_grace
        self._restore_policy = restore_policy
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self.assigned_once = False
        self._revoked_at: float | None = None
        self._failure: BaseException | None = None

    def check(self) -> None:
        """Raise what made a rebalance callback fail, if anything did."""
        if self._failure is not None:
            raise FatalError(f"taking over partitions failed: {self._failure}") from self._failure

    # -- aiokafka's callbacks -------------------------------------------------------
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            self._revoked_at = time.monotonic()
            mine = [tp for tp in revoked if tp in self.workers]
            if mine:
                await self.release(mine, self._revoke_grace)
                log.info("partitions_revoked", partitions=sorted(tp.partition for tp in mine))
        except Exception:
            log.exception("revocation_failed", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._take_over(sorted(assigned, key=lambda t: t.partition))
        except Exception as exc:
            log.exception("assignment_failed", partitions=sorted(tp.partition for tp in assigned))
            self._failure = exc

    # -- hand-over ------------------------------------------------------------------
    async def _take_over(self, assigned: list[TopicPartition]) -> None:
        new = [tp for tp in assigned if tp not in self.workers]
        sinks = await self._guarantee.open(new)  # exactly-once: fences previous owners
        committed = await self._committed(new)
        now = time.time()
        # From here to the end: no await, so the fetch loop sees each partition complete.
        for tp in new:
            offset, mark = committed.get(tp, (-1, ReplayMark()))
            watermark = self._pipeline_config.trusted_watermark(mark.watermark, now)
            if watermark != mark.watermark:
                log.warning(
                    "watermark_reset",
                    partition=tp.partition,
                    committed_watermark=mark.watermark,
                    reason="beyond --max-future-skew of this processor's clock",
                )
            if offset >= 0:
                self._consumer.seek(tp, offset)
            pipeline = PartitionPipeline(
                tp.topic,
                tp.partition,
                self._pipeline_config,
                replay_until=mark.until,
                watermark=watermark,
                collect_valid=self._handler_runner is not None,
            )
            sink = sinks[tp]
            sink.restored(Checkpoint(offset, mark) if offset >= 0 else None)
            worker = PartitionWorker(
                tp,
                pipeline,
                feed=self._fetcher.open_feed(tp),
                sink=sink,
                options=self._worker_options,
                metrics=self._metrics,
                handler=self._handler_runner(pipeline) if self._handler_runner else None,
            )
            self.workers[tp] = worker
            worker.start(self._spawn)
        self.assigned_once = True
        self._metrics.assigned_partitions.set(len(self.workers))
        self._metrics.rebalances.inc()
        if self._revoked_at is not None:
            self._metrics.rebalance_duration.observe(time.monotonic() - self._revoked_at)
            self._revoked_at = None
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in self.workers),
            resumed_from={str(tp.partition): committed.get(tp, (-1, None))[0] for tp in new},
        )

    async def release(self, tps: list[TopicPartition], grace: float) -> None:
        """Stop the workers of ``tps`` (chunk in progress up to ``grace``), then let the
        guarantee commit (or abort) what they finished."""
        workers = [self.workers[tp] for tp in tps if tp in self.workers]
        if not workers:
            return
        try:
            clean = await asyncio.gather(*(w.stop(grace) for w in workers))
            for worker in workers:
                self._fetcher.close_feed(worker.tp)
            await self._guarantee.release(
                [(w.tp, ok) for w, ok in zip(workers, clean, strict=True)], grace
            )
        finally:
            # Forgotten whatever happened: a stale worker would make a later assignment
            # of the same partition look taken already, and nothing would process it.
            for worker in workers:
                self._fetcher.close_feed(worker.tp)
                self.workers.pop(worker.tp, None)
            self._metrics.assigned_partitions.set(len(self.workers))

    async def leave(self, grace: float) -> None:
        """Shutdown: release every partition."""
        await self.release(list(self.workers), grace)

    def cancel_all(self) -> None:
        """Last resort when a shutdown ran out of time: cancel every worker task."""
        for worker in self.workers.values():
            worker.cancel()

    async def _committed(
        self, tps: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, ReplayMark]]:
        """Committed offset and replay mark (from the commit metadata) per partition."""
        if not tps:
            return {}

        async def read() -> dict[TopicPartition, Any]:
            with kafka_errors("reading the committed offsets"):
                offsets: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(
                    self._group_id, partitions=tps
                )
            return offsets

        try:
            offsets = await retry("restore offsets", read, policy=self._restore_policy)
        except SensorstreamError as exc:
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
