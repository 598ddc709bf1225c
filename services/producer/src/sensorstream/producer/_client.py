"""The aiokafka producer the sender needs: configured from the settings, and never
allowed to expire a batch it has accepted.

aiokafka 0.14 gives every queued batch a time to live of ``request_timeout_ms``
(40 s): a batch whose partition has had no leader for that long is failed with
``NotLeaderForPartitionError`` / ``LeaderNotAvailableError``
(``MessageAccumulator.drain_by_nodes``). Such a batch cannot be resent: the
partition's next batch may already be queued behind it, so a resend would reorder the
partition, and an idempotent producer has already spent the expired batch's sequence
numbers, so every later batch of the partition fails with ``OutOfOrderSequenceNumber``.
A broker away for 40 s cost the producer every reading it generated afterwards that way.

With an infinite time to live a queued batch waits for its leader however long the
broker is away; batches already sent are retried by the idempotent producer until they
are acknowledged. This module touches one private attribute of aiokafka for that, in
:func:`keep_batches_until_delivered`; ``tests/unit/producer/test_producer_client.py``
fails if an upgrade removes the attribute or stops honouring it.
"""

from __future__ import annotations

import math

from aiokafka import AIOKafkaProducer

from sensorstream.runtime import FatalError, client_options

from .settings import ProducerSettings

__all__ = ["create_producer", "keep_batches_until_delivered"]


def create_producer(settings: ProducerSettings) -> AIOKafkaProducer:
    """A new, not yet started producer for ``settings`` that never expires a batch."""
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks=settings.kafka_acks(),
        enable_idempotence=settings.idempotence,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.batch_size,
        compression_type=settings.kafka_compression(),
    )
    keep_batches_until_delivered(producer)
    return producer


def keep_batches_until_delivered(producer: AIOKafkaProducer) -> None:
    """Give ``producer``'s queued batches an infinite time to live (see the module doc).

    Call it before the first batch is queued: each batch copies the accumulator's time
    to live when it is created. Raises :class:`FatalError` if this aiokafka has no such
    setting any more, so an upgrade fails at start-up instead of losing readings later.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None or not isinstance(getattr(accumulator, "_batch_ttl", None), int | float):
        raise FatalError(
            "this aiokafka has no MessageAccumulator._batch_ttl: the producer cannot keep "
            "queued batches through a broker outage and would lose readings; use aiokafka "
            "0.14 (see sensorstream/producer/_client.py)"
        )
    # Private: aiokafka offers no setting for it (MessageBatch.expired compares with it).
    accumulator._batch_ttl = math.inf
