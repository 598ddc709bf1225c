"""Where a partition's outputs go: the shared idempotent producer (at-least-once) or a
per-partition transactional producer (exactly-once).

Both expose ``send(outputs)`` which returns once Kafka has acknowledged every record
(or, in a transaction, once they are in the open transaction). aiokafka errors are
translated here into :class:`RetriableError` / :class:`FatalError`; nothing above this
module matches on client internals.

Exactly-once fencing: the transactional id is ``<group_id>-<topic>-<partition>``, one
producer per *input partition*, not per instance. aiokafka 0.14 commits offsets to a
transaction without the group generation (no KIP-447), so only a transactional id
that follows the partition fences a zombie: the new owner's ``InitProducerId`` bumps
the epoch, aborts the previous owner's open transaction at once (no waiting for the
transaction timeout) and makes any later commit of the zombie fail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from sensorstream.schema import FatalError, RetriableError

from ._pipeline import OutputRecord

__all__ = [
    "MAX_OUTPUT_BYTES",
    "OutputProducer",
    "PartitionFencedError",
    "TransactionalOutput",
    "transactional_id",
]

log = structlog.get_logger("sensorstream.processor")

# A dead letter carries the original value (up to the broker's 1 MiB default) plus
# our headers, so the output producer must accept requests above 1 MiB.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024


class PartitionFencedError(FatalError):
    """Another processor took this partition's transactional id: stop working on it."""


def _producer_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        **options,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_request_size": MAX_OUTPUT_BYTES,
    }


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The transactional id that follows an input partition from owner to owner."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


class OutputProducer:
    """The idempotent producer all partition workers share in at-least-once mode."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._producer = AIOKafkaProducer(**_producer_options(options))

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise RetriableError(f"cannot start the output producer: {exc}") from exc

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, outputs: list[OutputRecord]) -> None:
        """Produce ``outputs`` in order and wait until Kafka acknowledged all of them."""
        # Outputs are few (aggregates, alerts, dead letters): send() futures are fine here.
        send = self._producer.send
        try:
            futures = [
                await send(out.topic, out.value, key=out.key, headers=out.headers or None)
                for out in outputs
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise RetriableError(f"producing {len(outputs)} outputs failed: {exc}") from exc


class TransactionalOutput:
    """One input partition's transactional producer (exactly-once mode).

    Owned by that partition's worker: the worker's sends and its commits run on one
    task, so they never interleave.
    """

    def __init__(self, options: dict[str, Any], *, group_id: str, tp: TopicPartition) -> None:
        self.tp = tp
        self._group_id = group_id
        self._in_transaction = False
        self._producer = AIOKafkaProducer(
            **_producer_options(options), transactional_id=transactional_id(group_id, tp)
        )

    async def start(self) -> None:
        """Start and fence any previous owner of this partition (InitProducerId)."""
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise RetriableError(
                f"cannot start the transactional producer for {self.tp.topic}-"
                f"{self.tp.partition}: {exc}"
            ) from exc

    async def stop(self) -> None:
        """Abort an open transaction (its outputs vanish, its offsets stay) and stop."""
        if self._in_transaction:
            try:
                await self._producer.abort_transaction()
            except KafkaError:
                log.warning("transaction_abort_failed", partition=self.tp.partition, exc_info=True)
            self._in_transaction = False
        await self._producer.stop()

    async def _begin(self) -> None:
        if not self._in_transaction:
            await self._producer.begin_transaction()
            self._in_transaction = True

    async def send(self, outputs: list[OutputRecord]) -> None:
        """Add ``outputs`` to the open transaction (begun if needed) and wait for the writes."""
        try:
            await self._begin()
            send = self._producer.send
            futures = [
                await send(out.topic, out.value, key=out.key, headers=out.headers or None)
                for out in outputs
            ]
            await asyncio.gather(*futures)
        except ProducerFenced as exc:
            raise PartitionFencedError(self._fenced_message()) from exc
        except KafkaError as exc:
            raise FatalError(
                f"producing {len(outputs)} outputs in a transaction for partition "
                f"{self.tp.partition} failed: {exc}; restarting resumes from the last "
                "committed transaction"
            ) from exc

    async def commit(self, offset: int, metadata: str) -> None:
        """Put the partition's offset (with replay metadata) in the transaction and commit it."""
        try:
            await self._begin()
            await self._producer.send_offsets_to_transaction(
                {self.tp: (offset, metadata)}, self._group_id
            )
            await self._producer.commit_transaction()
            self._in_transaction = False
        except ProducerFenced as exc:
            raise PartitionFencedError(self._fenced_message()) from exc
        except KafkaError as exc:
            raise FatalError(
                f"committing the transaction of partition {self.tp.partition} failed: {exc}; "
                "restarting resumes from the last committed transaction"
            ) from exc

    def _fenced_message(self) -> str:
        return (
            f"partition {self.tp.topic}-{self.tp.partition} was fenced: another processor "
            f"of group {self._group_id!r} owns transactional id "
            f"{transactional_id(self._group_id, self.tp)!r} now"
        )
