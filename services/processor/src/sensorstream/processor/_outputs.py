"""Where a partition's outputs go: the shared idempotent producer (at-least-once) or a
per-partition transactional producer (exactly-once).

Both expose ``send(outputs)``, which returns once Kafka has acknowledged every record
(or, in a transaction, once they are written to the open transaction). A retriable
failure (broker unreachable, leader moving, a local queue full for the client's request
timeout) is retried with backoff within the processor's ``--retry-budget``; only the
outputs not yet acknowledged are sent again. A dead letter the broker refuses as too
large is sent again without its value (``DeadLetterWriter.shrink``), so a size limit
never stops the service. Anything else is fatal. Client errors are translated by
``sensorstream.runtime.errors``; nothing above this module sees aiokafka's classes.

Exactly-once fencing: the transactional id is ``<group_id>-<topic>-<partition>``, one
producer per *input partition*, not per instance. aiokafka 0.14 commits offsets to a
transaction without the group generation (no KIP-447), so only a transactional id
that follows the partition fences a zombie: the new owner's ``InitProducerId`` bumps
the epoch, aborts the previous owner's open transaction at once (no waiting for the
transaction timeout) and makes any later commit of the zombie fail
(:class:`~sensorstream.schema.OwnershipLostError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from sensorstream.runtime import RetryPolicy, kafka_errors, retry, translate_kafka_error
from sensorstream.schema import OwnershipLostError, RecordTooLargeError, RetriableError

from ._dead_letters import DeadLetterWriter, OutputRecord

__all__ = ["ACK_WAIT", "OutputProducer", "TransactionalOutput", "transactional_id"]

log = structlog.get_logger("sensorstream.processor")

ACK_WAIT: Final = 10.0
"""Seconds one attempt waits for acknowledgements before it counts as a retry (the
records stay with the client, which keeps delivering them; nothing is sent twice)."""


def producer_options(options: dict[str, Any], *, max_request_size: int) -> dict[str, Any]:
    return {
        **options,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_request_size": max_request_size,
    }


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The transactional id that follows an input partition from owner to owner."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


class _Delivery:
    """The outputs of one ``send`` and, per output, the client's future once handed over."""

    __slots__ = ("futures", "outputs")

    def __init__(self, outputs: list[OutputRecord]) -> None:
        self.outputs = list(outputs)
        self.futures: list[asyncio.Future[Any] | None] = [None] * len(outputs)


class _Sending:
    """The send-and-acknowledge logic both producers share (see the module doc)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        policy: RetryPolicy,
        dead_letters: DeadLetterWriter,
        on_shrunk: Callable[[], None],
    ) -> None:
        self._producer = producer
        self._policy = policy
        self._dead_letters = dead_letters
        self._on_shrunk = on_shrunk

    async def _deliver(self, outputs: list[OutputRecord]) -> None:
        delivery = _Delivery(outputs)
        try:  # the direct attempt first: the retry loop's set-up is for when it fails
            await self._attempt(delivery)
        except RetriableError:
            await retry("outputs", lambda: self._attempt(delivery), policy=self._policy)

    async def _attempt(self, delivery: _Delivery) -> None:
        """Hand over what is not with the client yet, then wait (bounded) for the acks."""
        send = self._producer.send
        outputs, futures = delivery.outputs, delivery.futures
        for i, out in enumerate(outputs):
            if futures[i] is not None:
                continue
            try:
                with kafka_errors(f"producing to {out.topic}"):
                    futures[i] = await send(
                        out.topic, out.value, key=out.key, headers=out.headers or None
                    )
            except RecordTooLargeError:
                if not self._shrink(delivery, i):
                    raise
                with kafka_errors(f"producing to {out.topic}"):
                    futures[i] = await send(
                        out.topic, outputs[i].value, key=out.key, headers=outputs[i].headers
                    )
        waiting = [f for f in futures if f is not None and not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=ACK_WAIT)
        unacknowledged = 0
        last_error: BaseException | None = None
        for i, future in enumerate(futures):
            if future is None or not future.done():
                unacknowledged += 1
                continue
            exc = future.exception()
            if exc is None:
                continue
            error = translate_kafka_error(exc, f"producing to {outputs[i].topic}")
            if isinstance(error, RecordTooLargeError) and self._shrink(delivery, i):
                unacknowledged += 1
            elif isinstance(error, RetriableError):
                futures[i] = None  # failed for good at the client: send it again
                unacknowledged += 1
                last_error = error
            else:
                raise error from exc
        if unacknowledged:
            cause = f" (last error: {last_error})" if last_error else ""
            raise RetriableError(
                f"{unacknowledged} of {len(outputs)} outputs not acknowledged after "
                f"{ACK_WAIT:g} s{cause}"
            )

    def _shrink(self, delivery: _Delivery, i: int) -> bool:
        """Replace a too-large dead letter by its value-less form; False for other records."""
        out = delivery.outputs[i]
        if out.topic != self._dead_letters.topic or (out.truncated and not out.value):
            return False
        delivery.outputs[i] = self._dead_letters.shrink(out)
        delivery.futures[i] = None
        log.warning(
            "dead_letter_shrunk",
            topic=out.topic,
            size=len(out.value or b""),
            hint="the DLQ topic's max.message.bytes is below what the processor was told",
        )
        self._on_shrunk()
        return True


class OutputProducer(_Sending):
    """The idempotent producer all partition workers share in at-least-once mode."""

    def __init__(
        self,
        options: dict[str, Any],
        *,
        max_request_size: int,
        policy: RetryPolicy,
        dead_letters: DeadLetterWriter,
        on_shrunk: Callable[[], None],
    ) -> None:
        producer = AIOKafkaProducer(**producer_options(options, max_request_size=max_request_size))
        super().__init__(producer, policy=policy, dead_letters=dead_letters, on_shrunk=on_shrunk)

    async def start(self, startup: RetryPolicy) -> None:
        async def start() -> None:
            with kafka_errors("starting the output producer"):
                await self._producer.start()

        await retry("start output producer", start, policy=startup)

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, outputs: list[OutputRecord]) -> None:
        """Produce ``outputs`` in order and wait until Kafka acknowledged all of them."""
        await self._deliver(outputs)


class TransactionalOutput(_Sending):
    """One input partition's transactional producer (exactly-once mode).

    Owned by that partition's worker: the worker's sends and its commits run on one
    task, so they never interleave.
    """

    def __init__(
        self,
        options: dict[str, Any],
        *,
        group_id: str,
        tp: TopicPartition,
        max_request_size: int,
        policy: RetryPolicy,
        dead_letters: DeadLetterWriter,
        on_shrunk: Callable[[], None],
    ) -> None:
        self.tp = tp
        self._group_id = group_id
        self._in_transaction = False
        self._fenced = False
        """A newer owner fenced this producer: it can neither commit nor abort again."""
        producer = AIOKafkaProducer(
            **producer_options(options, max_request_size=max_request_size),
            transactional_id=transactional_id(group_id, tp),
        )
        super().__init__(producer, policy=policy, dead_letters=dead_letters, on_shrunk=on_shrunk)

    async def start(self, startup: RetryPolicy) -> None:
        """Start and fence any previous owner of this partition (InitProducerId)."""

        async def start() -> None:
            with kafka_errors(
                f"starting the transactional producer of {self.tp.topic}-{self.tp.partition}"
            ):
                await self._producer.start()

        await retry("start transactional producer", start, policy=startup)

    async def stop(self) -> None:
        """Abort an open transaction (its outputs vanish, its offsets stay) and stop.

        A fenced producer's transaction was aborted by the coordinator already.
        """
        if self._in_transaction and not self._fenced:
            try:
                with kafka_errors("aborting the transaction"):
                    await self._producer.abort_transaction()
            except Exception:
                log.warning("transaction_abort_failed", partition=self.tp.partition, exc_info=True)
            self._in_transaction = False
        await self._producer.stop()

    def _owned(self) -> None:
        if self._fenced:
            raise OwnershipLostError(
                f"partition {self.tp.partition}: a newer owner fenced this producer"
            )

    async def _begin(self) -> None:
        self._owned()
        if not self._in_transaction:
            with kafka_errors(f"beginning a transaction for partition {self.tp.partition}"):
                await self._producer.begin_transaction()
            self._in_transaction = True

    async def send(self, outputs: list[OutputRecord]) -> None:
        """Add ``outputs`` to the open transaction (begun if needed) and wait for the writes."""
        await self._begin()
        try:
            await self._deliver(outputs)
        except OwnershipLostError:
            self._fenced = True
            raise

    async def commit(self, offset: int, metadata: str) -> None:
        """Put the partition's offset (with replay metadata) in the transaction and commit.

        aiokafka retries the transaction's requests itself until the broker answers, so
        this waits through an outage; a fenced producer raises OwnershipLostError.
        """
        await self._begin()
        try:
            with kafka_errors(f"committing the transaction of partition {self.tp.partition}"):
                await self._producer.send_offsets_to_transaction(
                    {self.tp: (offset, metadata)}, self._group_id
                )
                await self._producer.commit_transaction()
        except OwnershipLostError:
            # The client is now in a fatal state: a second commit or an abort would fail
            # with an error that says nothing about why (IllegalOperation).
            self._fenced = True
            raise
        self._in_transaction = False
