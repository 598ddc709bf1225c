"""The delivery guarantee, one strategy object per mode: :class:`AtLeastOnce` and
:class:`ExactlyOnce`, chosen once at start-up (``--guarantee``).

A worker sees only its :class:`PartitionSink`: ``send(outputs)`` and, after every
chunk it finished, ``checkpoint(checkpoint)``. A :class:`Checkpoint` is a snapshot the
worker takes once the chunk's outputs are acknowledged: the offset that may be
committed and the replay mark for the commit metadata. Commits only ever use such
snapshots, never the live pipeline, so a commit cannot record state that a chunk still
in flight has advanced (a watermark whose closed windows are not acknowledged yet).

* **At-least-once**: all partitions share one idempotent producer; the committer task
  (:meth:`AtLeastOnce.run`) commits every partition's newest checkpoint each
  ``--commit-interval``, and a partition's final one when it is released (revoked, or
  shutdown). A restart replays from the last commit: outputs after it may be emitted
  again, identically.
* **Exactly-once**: each partition gets its own transactional producer (created, and so
  fencing the previous owner, *before* its offsets are read); the worker's
  ``checkpoint`` commits the open transaction with the checkpoint's offset every
  ``--commit-interval``, on the worker's own task, so sends and commits never
  interleave. Releasing a partition commits its last transaction if the worker
  stopped cleanly and aborts it otherwise.

A commit refused because the partition belongs to someone else now
(:class:`~sensorstream.schema.OwnershipLostError`) is logged and counted, never
retried and never fatal: the next owner resumes from the last commit that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from sensorstream.runtime import RetryPolicy, kafka_errors, retry
from sensorstream.schema import OwnershipLostError, RetriableError, RetriesExhaustedError

from ._dead_letters import DeadLetterWriter, OutputRecord
from ._metrics import ProcessorMetrics
from ._outputs import ACK_WAIT, OutputProducer, TransactionalOutput
from ._windows import NO_WATERMARK

__all__ = [
    "AtLeastOnce",
    "Checkpoint",
    "DeliveryGuarantee",
    "ExactlyOnce",
    "PartitionSink",
    "ReplayMark",
]

log = structlog.get_logger("sensorstream.processor")


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


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What may be committed for one partition, as of the end of a finished chunk."""

    offset: int
    mark: ReplayMark

    @property
    def metadata(self) -> str:
        return self.mark.encode()


class PartitionSink(Protocol):
    """A worker's view of the guarantee: where its outputs go and where checkpoints go."""

    async def send(self, outputs: list[OutputRecord]) -> None:
        """Return once ``outputs`` are safely written (acknowledged, or in the transaction)."""

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """The worker finished everything up to ``checkpoint``; called after every chunk."""

    def restored(self, checkpoint: Checkpoint | None) -> None:
        """What the partition's last commit was when it was assigned (None: never)."""


class DeliveryGuarantee(Protocol):
    """One mode of delivery; see the module doc. Driven by the service and the group."""

    isolation_level: Literal["read_uncommitted", "read_committed"]

    async def start(self) -> None: ...

    async def open(self, tps: list[TopicPartition]) -> dict[TopicPartition, PartitionSink]:
        """Sinks for newly assigned partitions; called before their offsets are read."""

    async def run(self, stop: asyncio.Event) -> None:
        """The mode's background work until ``stop`` (the at-least-once committer)."""

    async def release(self, released: list[tuple[TopicPartition, bool]], grace: float) -> None:
        """Final commit (or abort) of stopped workers' partitions: (tp, stopped cleanly)."""

    async def stop(self) -> None: ...


def _commit_failed(metrics: ProcessorMetrics, partitions: Iterable[int], exc: Exception) -> None:
    metrics.commits_failed.inc()
    log.warning(
        "commit_failed", partitions=sorted(partitions), error=f"{type(exc).__name__}: {exc}"
    )


# --------------------------------------------------------------------------- at-least-once


class _CommittedLater:
    """An at-least-once partition: outputs through the shared producer, checkpoints kept
    for the committer."""

    __slots__ = ("committed", "latest", "producer", "tp")

    def __init__(self, tp: TopicPartition, producer: OutputProducer) -> None:
        self.tp = tp
        self.producer = producer
        self.latest: Checkpoint | None = None
        self.committed: Checkpoint | None = None

    async def send(self, outputs: list[OutputRecord]) -> None:
        await self.producer.send(outputs)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        self.latest = checkpoint

    def restored(self, checkpoint: Checkpoint | None) -> None:
        self.committed = checkpoint

    @property
    def due(self) -> Checkpoint | None:
        latest = self.latest
        return latest if latest is not None and latest != self.committed else None


class AtLeastOnce:
    """Commit checkpoints after the outputs are acknowledged; see the module doc."""

    isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted"

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        producer_options: dict[str, Any],
        max_request_size: int,
        dead_letters: DeadLetterWriter,
        commit_interval: float,
        policy: RetryPolicy,
        startup: RetryPolicy,
        metrics: ProcessorMetrics,
    ) -> None:
        self._consumer = consumer
        self._interval = commit_interval
        self._policy = policy
        self._startup = startup
        self._metrics = metrics
        self._producer = OutputProducer(
            producer_options,
            max_request_size=max_request_size,
            policy=policy,
            dead_letters=dead_letters,
            on_shrunk=metrics.dead_letters_truncated.inc,
        )
        self._partitions: dict[TopicPartition, _CommittedLater] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._producer.start(self._startup)

    async def open(self, tps: list[TopicPartition]) -> dict[TopicPartition, PartitionSink]:
        for tp in tps:
            self._partitions[tp] = _CommittedLater(tp, self._producer)
        return {tp: self._partitions[tp] for tp in tps}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
            if not stop.is_set():
                await self._commit(list(self._partitions.values()), self._policy)

    async def release(self, released: list[tuple[TopicPartition, bool]], grace: float) -> None:
        # A checkpoint is consistent even when the worker was cancelled mid-chunk.
        parts = [self._partitions.pop(tp) for tp, _ in released if tp in self._partitions]
        policy = RetryPolicy(budget=max(0.1, min(grace, self._policy.budget)))
        try:
            await self._commit(parts, policy)
        except RetriesExhaustedError as exc:
            _commit_failed(self._metrics, (p.tp.partition for p in parts), exc)

    async def stop(self) -> None:
        await self._producer.stop()

    async def _commit(self, parts: list[_CommittedLater], policy: RetryPolicy) -> None:
        due = {p.tp: (p, cp) for p in parts if (cp := p.due) is not None}
        if not due:
            return
        offsets = {tp: OffsetAndMetadata(cp.offset, cp.metadata) for tp, (_, cp) in due.items()}

        async def commit() -> None:
            with kafka_errors(f"committing {len(offsets)} partitions"):
                try:
                    # aiokafka retries a commit by itself for as long as it takes;
                    # bound each attempt so the retry budget (and its log) applies.
                    await asyncio.wait_for(self._consumer.commit(offsets), timeout=ACK_WAIT)
                except TimeoutError:
                    raise RetriableError(f"no answer to the commit within {ACK_WAIT:g} s") from None

        async with self._lock:
            started = time.perf_counter()
            try:
                await retry("commit", commit, policy=policy)
            except OwnershipLostError as exc:
                _commit_failed(self._metrics, (tp.partition for tp in due), exc)
                return
            self._metrics.commit_latency.observe(time.perf_counter() - started)
            self._metrics.commits_ok.inc()
        for part, cp in due.values():
            part.committed = cp
        log.debug(
            "offsets_committed", offsets={str(tp.partition): o.offset for tp, o in offsets.items()}
        )


# --------------------------------------------------------------------------- exactly-once


class _Transactional:
    """An exactly-once partition: its own transactional producer, committed by its worker."""

    __slots__ = ("_interval", "_last_commit", "_metrics", "committed", "latest", "output", "tp")

    def __init__(
        self, output: TransactionalOutput, *, interval: float, metrics: ProcessorMetrics
    ) -> None:
        self.tp = output.tp
        self.output = output
        self._interval = interval
        self._metrics = metrics
        self._last_commit = time.monotonic()
        self.latest: Checkpoint | None = None
        self.committed: Checkpoint | None = None

    async def send(self, outputs: list[OutputRecord]) -> None:
        await self.output.send(outputs)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        self.latest = checkpoint
        if time.monotonic() - self._last_commit >= self._interval:
            await self.commit()

    def restored(self, checkpoint: Checkpoint | None) -> None:
        self.committed = checkpoint

    async def commit(self) -> None:
        """Commit the open transaction with the latest checkpoint (if it moved)."""
        self._last_commit = time.monotonic()
        latest = self.latest
        if latest is None or latest == self.committed:
            return
        started = time.perf_counter()
        await self.output.commit(latest.offset, latest.metadata)
        self._metrics.commit_latency.observe(time.perf_counter() - started)
        self._metrics.commits_ok.inc()
        self.committed = latest


class ExactlyOnce:
    """Outputs and offsets in one transaction per partition; see the module doc."""

    isolation_level: Literal["read_uncommitted", "read_committed"] = "read_committed"

    def __init__(
        self,
        *,
        producer_options: dict[str, Any],
        max_request_size: int,
        dead_letters: DeadLetterWriter,
        group_id: str,
        commit_interval: float,
        policy: RetryPolicy,
        startup: RetryPolicy,
        metrics: ProcessorMetrics,
    ) -> None:
        self._make_output: Callable[[TopicPartition], TransactionalOutput] = lambda tp: (
            TransactionalOutput(
                producer_options,
                group_id=group_id,
                tp=tp,
                max_request_size=max_request_size,
                policy=policy,
                dead_letters=dead_letters,
                on_shrunk=metrics.dead_letters_truncated.inc,
            )
        )
        self._interval = commit_interval
        self._startup = startup
        self._metrics = metrics
        self._partitions: dict[TopicPartition, _Transactional] = {}

    async def start(self) -> None:
        return None

    async def open(self, tps: list[TopicPartition]) -> dict[TopicPartition, PartitionSink]:
        outputs = [self._make_output(tp) for tp in tps]
        # Fence the previous owners first, so the offsets read next are final.
        await asyncio.gather(*(output.start(self._startup) for output in outputs))
        for output in outputs:
            self._partitions[output.tp] = _Transactional(
                output, interval=self._interval, metrics=self._metrics
            )
        return {tp: self._partitions[tp] for tp in tps}

    async def run(self, stop: asyncio.Event) -> None:
        return None  # each worker commits its own transactions

    async def release(self, released: list[tuple[TopicPartition, bool]], grace: float) -> None:
        parts = [
            (self._partitions.pop(tp), clean) for tp, clean in released if tp in self._partitions
        ]
        await asyncio.gather(*(self._close(part, clean, grace) for part, clean in parts))

    async def _close(self, part: _Transactional, clean: bool, grace: float) -> None:
        try:
            # A chunk cancelled mid-way may have part of its outputs in the open
            # transaction without its offsets: abort (in stop()) rather than commit.
            if clean:
                await asyncio.wait_for(part.commit(), timeout=grace)
        except (OwnershipLostError, RetriableError, TimeoutError) as exc:
            _commit_failed(self._metrics, [part.tp.partition], exc)
        finally:
            await part.output.stop()

    async def stop(self) -> None:
        parts = list(self._partitions.values())
        self._partitions.clear()
        await asyncio.gather(*(part.output.stop() for part in parts))
