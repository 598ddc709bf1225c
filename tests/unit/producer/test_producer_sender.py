"""The batch sender: key partitioning, bounded batches in flight, and full accounting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from sensorstream.producer._metrics import ProducerMetrics
from sensorstream.producer._sender import BatchSender, LatencyWindow, error_kind, partition_for


class FakeBatch:
    """Holds up to ``capacity`` records, like a full aiokafka BatchBuilder returns None."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes, int]] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: int) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, timestamp))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Records each send_batch and hands back a future the test settles."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.sent: list[tuple[int, FakeBatch, asyncio.Future[Any]]] = []

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((partition, batch, future))
        return future


def _sender(producer: FakeProducer, **options: Any) -> tuple[BatchSender, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry)
    options = {"partitions": 6, "max_in_flight_batches": 100, **options}
    return BatchSender(producer, "t", metrics=metrics, **options), registry


def _records(count: int, sensors: int = 10) -> list[tuple[bytes, bytes]]:
    return [(f"sensor-{i % sensors:04d}".encode(), b"v%d" % i) for i in range(count)]


class TestPartitioning:
    def test_matches_default_partitioner(self) -> None:
        """Our partition for a key is the one aiokafka's (and Java's) default picks."""
        partitioner = DefaultPartitioner()
        for i in range(500):
            key = f"sensor-{i:04d}".encode()
            assert partitioner(key, list(range(6)), []) == partition_for(key, 6)

    async def test_same_sensor_same_partition_in_order(self) -> None:
        """Each key's records go to its one partition, in the order they were given."""
        producer = FakeProducer()
        sender, _ = _sender(producer)
        await sender.send(_records(200), 123)
        seen: dict[bytes, set[int]] = {}
        values: dict[bytes, list[bytes]] = {}
        for partition, batch, _ in producer.sent:
            for key, value, timestamp in batch.records:
                assert 123 == timestamp
                seen.setdefault(key, set()).add(partition)
                values.setdefault(key, []).append(value)
        assert all(len(p) == 1 and partition_for(k, 6) in p for k, p in seen.items())
        assert [b"v3", b"v13", b"v23"] == values[b"sensor-0003"][:3]


class TestBatching:
    async def test_full_batch_starts_another(self) -> None:
        """A batch that fills up is sent and the rest goes in a new one."""
        producer = FakeProducer(capacity=4)
        sender, _ = _sender(producer, partitions=1)
        await sender.send(_records(10), 1)
        assert [4, 4, 2] == [len(batch.records) for _, batch, _ in producer.sent]
        assert all(batch.closed for _, batch, _ in producer.sent)

    async def test_record_too_big_for_empty_batch(self) -> None:
        """A record no batch can hold is an error naming the setting, not a silent drop."""
        producer = FakeProducer(capacity=0)
        sender, _ = _sender(producer, partitions=1)
        with pytest.raises(ValueError, match="--batch-size"):
            await sender.send(_records(1), 1)

    async def test_bounded_in_flight(self) -> None:
        """With 2 batches in flight allowed, a third send waits until one is acked."""
        producer = FakeProducer(capacity=1)
        sender, _ = _sender(producer, partitions=1, max_in_flight_batches=2)
        task = asyncio.create_task(sender.send(_records(3), 1))
        await asyncio.sleep(0.01)
        assert (2, False) == (len(producer.sent), task.done())
        producer.sent[0][2].set_result(None)
        await asyncio.wait_for(task, 1)
        assert 3 == len(producer.sent)


class TestAccounting:
    async def test_acked_and_failed_counts(self) -> None:
        """Acked and failed batches add up to everything sent; metrics agree."""
        producer = FakeProducer(capacity=5)
        failures: list[tuple[str, int]] = []
        sender, registry = _sender(
            producer, partitions=1, on_failure=lambda exc, n: failures.append((str(exc), n))
        )
        await sender.send(_records(12), 1)
        assert 12 == sender.counts.in_flight
        producer.sent[0][2].set_result(None)
        producer.sent[1][2].set_exception(KafkaTimeoutError("slow"))
        producer.sent[2][2].set_result(None)
        assert await sender.flush(1.0)
        counts = sender.counts
        assert (12, 7, 5, 0) == (counts.sent, counts.acked, counts.failed, counts.in_flight)
        assert {"KafkaTimeoutError": 5} == counts.failed_by_kind
        assert [("KafkaTimeoutError: slow", 5)] == failures

        def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
            return registry.get_sample_value(name, labels or {})

        assert 12 == sample("sensorstream_producer_events_sent_total")
        assert 7 == sample("sensorstream_producer_events_acked_total")
        assert 5 == sample("sensorstream_producer_send_errors_total", {"kind": "KafkaTimeoutError"})
        assert 2 == sample("sensorstream_producer_send_latency_seconds_count")
        assert 3 == sample("sensorstream_producer_batch_size_events_count")
        assert 0 == sample("sensorstream_producer_events_in_flight")

    async def test_send_batch_raising_counts_as_failed(self) -> None:
        """If the client refuses a batch outright, its events are counted as failed."""

        class Refusing(FakeProducer):
            async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
                raise KafkaTimeoutError()

        sender, _ = _sender(Refusing(), partitions=1)
        await sender.send(_records(3), 1)
        assert (3, 0, 3) == (sender.counts.sent, sender.counts.acked, sender.counts.failed)

    async def test_cancelled_send_leaves_its_events_in_flight(self) -> None:
        """A send cancelled while waiting for a slot still accounts for every event it got."""
        producer = FakeProducer(capacity=1)
        sender, _ = _sender(producer, partitions=1, max_in_flight_batches=2)
        task = asyncio.create_task(sender.send(_records(5), 1))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait({task})
        counts = sender.counts
        assert (2, 5, 0, 0, 5) == (
            len(producer.sent),
            counts.sent,
            counts.acked,
            counts.failed,
            counts.in_flight,
        )

    async def test_flush_times_out_with_batches_in_flight(self) -> None:
        """flush reports False when acknowledgements do not come in time."""
        producer = FakeProducer()
        sender, _ = _sender(producer)
        await sender.send(_records(5), 1)
        assert not await sender.flush(0.01)
        assert 5 == sender.counts.in_flight

    @pytest.mark.parametrize(
        ("exc", "kind"),
        [
            (NotLeaderForPartitionError(), "NotLeaderForPartitionError"),
            (ConnectionResetError(), "connection"),
            (RuntimeError("x"), "other"),
        ],
    )
    def test_error_kind_is_bounded(self, exc: BaseException, kind: str) -> None:
        """Error labels are class names of Kafka errors or a few fixed words."""
        assert kind == error_kind(exc)


class TestLatencyWindow:
    def test_p99_is_event_weighted(self) -> None:
        """A slow batch of 2 events in 1,000 is beyond the 99th percentile; a big one is not."""
        window = LatencyWindow()
        window.add(0.010, 998)
        window.add(5.0, 2)
        assert 0.010 == window.take_p99()
        window.add(0.010, 900)
        window.add(5.0, 100)
        assert 5.0 == window.take_p99()
        assert None is window.take_p99()
