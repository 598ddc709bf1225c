"""The sink's one loop: collect a batch, write it to PostgreSQL, then commit its offsets.

Order per batch, and why it cannot lose or double-count a record:

1. **collect** (:meth:`SinkLoop.collect`): ``getmany`` until ``--batch-size`` records or
   ``--batch-time`` seconds after the first one (or a stop request); this overlaps with
   the previous batch's write, never with another collect or write;
2. **write** (:meth:`SinkLoop.flush`): one database transaction (``PostgresStore.write``),
   retried with backoff while the database is unreachable (``--database-retry-budget``);
3. **commit** the batch's offsets to Kafka, only after the database committed. A commit
   that fails (broker away, budget spent) is not fatal: its offsets stay pending and go
   with the next batch's commit. One refused because the group moved on is dropped:
   the new owner replays from the last commit, and the upserts make that a no-op.

A crash between 2 and 3 replays at most the batches since the last Kafka commit; the
database then finds every identity stored with the same contents and writes nothing.

Rebalances (:class:`SinkMembership`, aiokafka's ``ConsumerRebalanceListener``): the
callbacks run on the consumer's coordinator task while the loop awaits ``getmany`` or
a write. ``on_partitions_revoked`` waits (up to ``revoke_grace``) for a batch being
written to finish and commit, then drops what the batch being collected holds of the
revoked partitions (the next owner consumes it from the last commit), so this member
never writes a revoked partition's records after its new owner may have. Exceptions
in the callbacks are logged, never raised into aiokafka.

Shutdown: on a stop request the loop writes what it has collected, giving the write
``--shutdown-timeout`` / 2; a database that does not take it by then (it is down) is
given up: nothing of that batch is committed anywhere, and the next start replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from sensorstream.runtime import (
    OwnershipLostError,
    RetriableError,
    RetriesExhaustedError,
    RetryPolicy,
    kafka_errors,
    retry,
)

from ._batch import Batch, Role
from ._database import PostgresStore, WriteResult
from ._metrics import ROLES, SinkMetrics

__all__ = ["SinkLoop", "SinkMembership"]

log = structlog.get_logger("sensorstream.sink")

COMMIT_WAIT: Final = 10.0
"""Seconds one offset commit attempt may take (aiokafka retries one by itself forever)."""
_IDLE_POLL: Final = 0.5
"""Seconds one ``getmany`` waits while no batch is open (how soon a stop is seen)."""
_FETCH_BACKOFF: Final = 1.0


class SinkLoop:
    """Consumes both topics into the database, batch by batch; see the module docstring."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: PostgresStore,
        *,
        topics: Mapping[Role, str],
        batch_size: int,
        batch_time: float,
        database_policy: RetryPolicy,
        commit_policy: RetryPolicy,
        shutdown_grace: float,
        metrics: SinkMetrics,
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._topics = dict(topics)
        self._roles: dict[str, Role] = {topic: role for role, topic in topics.items()}
        self._batch_size = batch_size
        self._batch_time = batch_time
        self._database_policy = database_policy
        self._commit_policy = commit_policy
        self._shutdown_grace = shutdown_grace
        self._metrics = metrics
        self._collecting: Batch | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.pending: dict[tuple[Role, int], int] = {}
        """(role, partition) -> next offset the database has and Kafka does not yet."""
        self.written: dict[tuple[Role, int], int] = {}
        """(role, partition) -> next offset the database has (for the lag)."""
        self.rows_written = 0
        self.batches = 0

    # ------------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Collect, write, commit until ``stop``; the last batch is written on the way out.

        The next batch is collected (fetched and decoded) while the previous one is being
        written; writes never overlap: batch N+1's write starts after batch N's database
        and Kafka commits are done, so offsets are committed in order.
        """
        writing: asyncio.Future[WriteResult | None] | None = None
        try:
            while not stop.is_set():
                batch = await self.collect(stop)
                if writing is not None:
                    await writing
                    writing = None
                # Until here a revocation may still drop records from it (``release``).
                self._collecting = None
                if batch:
                    writing = asyncio.ensure_future(self.flush(batch, stop))
            if writing is not None:
                await writing
                writing = None
        finally:
            if writing is not None and not writing.done():
                # Only when collecting failed for good: the process is about to exit.
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writing

    async def collect(self, stop: asyncio.Event) -> Batch:
        """Records until the batch is full, its time is up, or ``stop`` is set.

        The batch stays the one ``release`` drops revoked partitions from until ``run``
        hands it to ``flush``.
        """
        batch = Batch()
        self._collecting = batch
        consumer, roles, consumed = self._consumer, self._roles, self._metrics.consumed
        deadline: float | None = None
        while len(batch) < self._batch_size and not stop.is_set():
            wait = _IDLE_POLL if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                with kafka_errors("fetching records"):
                    fetched = await consumer.getmany(
                        timeout_ms=max(1, int(wait * 1000)),
                        max_records=self._batch_size - len(batch),
                    )
            except RetriableError as exc:
                log.warning("fetch_failed", error=str(exc))
                await asyncio.sleep(_FETCH_BACKOFF)
                continue
            add = batch.add
            for tp, records in fetched.items():
                role = roles[tp.topic]
                consumed[role].inc(len(records))
                partition = tp.partition
                # Per record: one decode and one dict store (Batch.add), nothing else.
                for record in records:
                    add(role, partition, record.offset, record.value)
            if deadline is None and batch:
                deadline = time.monotonic() + self._batch_time
        return batch

    async def flush(self, batch: Batch, stop: asyncio.Event) -> WriteResult | None:
        """Write ``batch`` to the database, then commit its offsets; None if given up."""
        self._idle.clear()
        try:
            result = await self._write(batch, stop)
            if result is None:
                self._metrics.batches_aborted.inc()
                log.warning(
                    "batch_aborted",
                    records=len(batch),
                    reason="the database did not take it before the shutdown timeout",
                )
                return None
            self._account(batch, result)
            self.pending.update(batch.offsets)
            self.written.update(batch.offsets)
            await self.commit(shutting_down=stop.is_set())
            return result
        finally:
            self._idle.set()

    async def _write(self, batch: Batch, stop: asyncio.Event) -> WriteResult | None:
        store = self._store
        write = asyncio.ensure_future(
            retry("database", lambda: store.write(batch), policy=self._database_policy)
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({write, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not write.done():
                # Stop requested mid-write: a healthy database finishes within the grace.
                await asyncio.wait({write}, timeout=self._shutdown_grace)
        finally:
            stopped.cancel()
        if not write.done():
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
            return None
        return write.result()

    def _account(self, batch: Batch, result: WriteResult) -> None:
        m = self._metrics
        for role in ROLES:
            m.rows_written[role].inc(result.inserted[role] + result.changed[role])
            m.conflicts[role, "identical"].inc(result.identical[role])
            m.conflicts[role, "changed"].inc(result.changed[role])
        for (role, outcome), count in batch.repeats.items():
            m.conflicts[role, outcome].inc(count)
        for (role, reason), count in batch.skipped.items():
            m.skipped[role, reason].inc(count)
        if batch.skipped:
            log.warning(
                "records_skipped", counts={f"{r}:{why}": n for (r, why), n in batch.skipped.items()}
            )
        changed = sum(result.changed.values()) + sum(
            n for (_, outcome), n in batch.repeats.items() if outcome == "changed"
        )
        if changed:
            log.warning(
                "rows_changed",
                count=changed,
                meaning="a window or alert arrived again with other contents; the latest was kept",
            )
        m.batches_committed.inc()
        m.batch_duration.observe(result.seconds)
        m.batch_rows.observe(result.rows)
        self.rows_written += result.rows
        self.batches += 1
        log.debug(
            "batch_written",
            records=len(batch),
            inserted=sum(result.inserted.values()),
            changed=sum(result.changed.values()),
            identical=sum(result.identical.values()),
            seconds=round(result.seconds, 4),
        )

    # ------------------------------------------------------------------------ commits

    async def commit(
        self, *, shutting_down: bool = False, only: set[TopicPartition] | None = None
    ) -> None:
        """Commit the pending offsets of assigned partitions (``only`` those, if given)."""
        assignment = self._consumer.assignment()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for (role, partition), offset in list(self.pending.items()):
            tp = TopicPartition(self._topics[role], partition)
            if tp not in assignment:
                # Someone else owns it now; they resume from the last commit that worked.
                del self.pending[role, partition]
                continue
            if only is None or tp in only:
                offsets[tp] = OffsetAndMetadata(offset, "")
        if not offsets:
            return
        policy = self._commit_policy
        if shutting_down:
            policy = RetryPolicy(budget=max(0.1, min(policy.budget, self._shutdown_grace)))
        consumer = self._consumer

        async def attempt() -> None:
            with kafka_errors(f"committing {len(offsets)} partitions"):
                try:
                    await asyncio.wait_for(consumer.commit(offsets), timeout=COMMIT_WAIT)
                except TimeoutError:
                    raise RetriableError(
                        f"no answer to the offset commit within {COMMIT_WAIT:g} s"
                    ) from None

        started = time.perf_counter()
        try:
            await retry("commit", attempt, policy=policy)
        except OwnershipLostError as exc:
            self._metrics.commits_failed.inc()
            log.warning("commit_refused", partitions=_names(offsets), error=str(exc))
            for tp in offsets:
                self.pending.pop((self._roles[tp.topic], tp.partition), None)
            return
        except RetriesExhaustedError as exc:
            # The rows are in the database: the next batch's commit carries these too.
            self._metrics.commits_failed.inc()
            log.warning("commit_failed", partitions=_names(offsets), error=str(exc))
            return
        self._metrics.commits_ok.inc()
        self._metrics.commit_latency.observe(time.perf_counter() - started)
        for tp, meta in offsets.items():
            key = (self._roles[tp.topic], tp.partition)
            if self.pending.get(key) == meta.offset:
                del self.pending[key]

    # ------------------------------------------------------------------------ rebalances

    async def wait_idle(self, within: float) -> bool:
        """Wait up to ``within`` s for a batch being written to be done; True if it is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=within)
        except TimeoutError:
            return False
        return True

    def release(self, revoked: set[TopicPartition]) -> None:
        """Forget the revoked partitions: their records not yet written, their offsets."""
        by_role: dict[Role, set[int]] = {}
        for tp in revoked:
            role = self._roles.get(tp.topic)
            if role is not None:
                by_role.setdefault(role, set()).add(tp.partition)
        for role, partitions in by_role.items():
            if self._collecting is not None:
                self._collecting.discard(role, partitions)
            for partition in partitions:
                self.pending.pop((role, partition), None)
                self.written.pop((role, partition), None)
                self._metrics.drop_lag(role, partition)

    def update_lag(self) -> int:
        """Refresh the lag gauges; return the total lag in records."""
        total = 0
        consumer = self._consumer
        for (role, partition), written in list(self.written.items()):
            tp = TopicPartition(self._topics[role], partition)
            end = consumer.last_stable_offset(tp)
            if end is None:
                continue
            lag = max(0, end - written)
            self._metrics.lag.labels(topic=role, partition=str(partition)).set(lag)
            total += lag
        return total


class SinkMembership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partitions over cleanly (see the module docstring)."""

    def __init__(
        self, loop: SinkLoop, *, topics: Mapping[Role, str], metrics: SinkMetrics, grace: float
    ) -> None:
        self._loop = loop
        self._roles = {topic: role for role, topic in topics.items()}
        self._metrics = metrics
        self._grace = grace
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.assigned_once = False

    def by_role(self) -> dict[str, list[int]]:
        """The assigned partitions per topic role, for /readyz and logs."""
        found: dict[str, list[int]] = {role: [] for role in ROLES}
        for tp in self.assigned:
            role = self._roles.get(tp.topic)
            if role is not None:
                found[role].append(tp.partition)
        return {role: sorted(partitions) for role, partitions in found.items()}

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            revoked = set(revoked)
            if not revoked:
                return
            self._metrics.rebalances.inc()
            if not await self._loop.wait_idle(self._grace):
                log.warning("revoke_while_writing", waited=self._grace)
            else:
                await self._loop.commit(shutting_down=True, only=revoked)
            self._loop.release(revoked)
            self.assigned = self.assigned - revoked
            log.info("partitions_revoked", partitions=_names(revoked))
        except Exception:
            log.exception("revoke_failed")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            self.assigned = frozenset(assigned)
            self.assigned_once = True
            self._metrics.assigned_partitions.set(len(self.assigned))
            log.info("partitions_assigned", **self.by_role())
        except Exception:
            log.exception("assign_failed")


def _names(partitions: Any) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)
