"""The guard against aiokafka expiring queued batches (``_client.py``).

It sets a private attribute of aiokafka's accumulator. These tests pin down both that
the attribute is still there and that aiokafka still honours it, with a control that
shows the expiry it defeats still happens without it: an upgrade that changes either
fails here instead of quietly dropping readings in the next broker outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import NotLeaderForPartitionError
from aiokafka.producer import message_accumulator

from sensorstream.producer._client import create_producer, keep_batches_until_delivered
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import FatalError, load_settings

AN_HOUR = 3600.0


class AgingClock:
    """Stands in for the ``time`` module aiokafka's accumulator reads: ``age`` s ahead."""

    def __init__(self) -> None:
        self.age = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.age


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> AgingClock:
    """aiokafka's accumulator on a clock the test moves forward."""
    aging = AgingClock()
    monkeypatch.setattr(message_accumulator, "time", SimpleNamespace(monotonic=aging.monotonic))
    return aging


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    """A producer that is never started: its accumulator works without a broker.

    Not idempotent, because an idempotent one needs a producer id from a broker before
    a batch may leave the queue; the expiry in the queue is the same either way.
    """
    client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    yield client
    await client.stop()


async def _queue_leaderless_batch(producer: AIOKafkaProducer) -> Any:
    """Queue one batch for a partition nobody leads (not in the metadata); its delivery."""
    batch = producer.create_batch()
    batch.append(key=b"sensor-0000", value=b"{}", timestamp=None)
    batch.close()
    accumulator = producer._message_accumulator
    return await accumulator.add_batch(batch, TopicPartition("readings", 0), timeout=1.0)


class TestKeepBatchesUntilDelivered:
    async def test_create_producer_applies_it(self) -> None:
        """The service's producer has an infinite batch time to live."""
        producer = create_producer(load_settings(ProducerSettings, []))
        try:
            assert math.inf == producer._message_accumulator._batch_ttl
        finally:
            await producer.stop()

    async def test_without_it_aiokafka_expires_a_leaderless_batch(
        self, producer: AIOKafkaProducer, clock: AgingClock
    ) -> None:
        """Control: a batch without a leader for longer than its TTL fails; that is the loss."""
        delivery = await _queue_leaderless_batch(producer)
        producer._message_accumulator.drain_by_nodes(ignore_nodes=set())
        assert not delivery.done()  # young: still waiting for a leader
        clock.age = AN_HOUR
        producer._message_accumulator.drain_by_nodes(ignore_nodes=set())
        await asyncio.sleep(0)  # the delivery is a shield: its outcome arrives a step later
        assert delivery.done()
        assert isinstance(delivery.exception(), NotLeaderForPartitionError)

    async def test_with_it_a_leaderless_batch_stays_queued(
        self, producer: AIOKafkaProducer, clock: AgingClock
    ) -> None:
        """With the guard a batch waits for its leader however long: never failed, still queued."""
        keep_batches_until_delivered(producer)
        delivery = await _queue_leaderless_batch(producer)
        clock.age = AN_HOUR
        producer._message_accumulator.drain_by_nodes(ignore_nodes=set())
        await asyncio.sleep(0)
        assert not delivery.done()
        assert [TopicPartition("readings", 0)] == list(producer._message_accumulator._batches)
        delivery.cancel()

    def test_an_aiokafka_without_the_setting_fails_at_start(self) -> None:
        """If aiokafka no longer has the attribute, start-up fails naming the problem."""
        stand_in = SimpleNamespace(_message_accumulator=SimpleNamespace())
        with pytest.raises(FatalError, match=r"MessageAccumulator\._batch_ttl"):
            keep_batches_until_delivered(stand_in)  # type: ignore[arg-type]
