"""The batch sender: key partitioning, bounded batches in flight, waiting out an outage
in order, a failed delivery being fatal, and full accounting."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import DefaultPartitioner
from fake_kafka_producer import FakeBatch, FakeProducer
from prometheus_client import CollectorRegistry
from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks
from structlog.testing import capture_logs

from sensorstream.producer._metrics import ProducerMetrics
from sensorstream.producer._sender import (
    BatchSender,
    DeliveryFailedError,
    LatencyWindow,
    error_kind,
    lane_capacity,
    partition_for,
)
from sensorstream.runtime import RetryPolicy, instrument_retries

# Retries without waiting, so a test's retry count is exact and it runs at once.
NO_WAIT = RetryPolicy(budget=math.inf, wait_initial=0.001, wait_max=0.001, wait_jitter=0.0)


@pytest.fixture(autouse=True)
def restored_retry_hooks() -> Iterator[None]:
    """instrument_retries replaces stamina's global hooks: put the previous ones back."""
    hooks = get_on_retry_hooks()
    yield
    set_on_retry_hooks(hooks)


_SENDERS: list[BatchSender] = []


@pytest.fixture(autouse=True)
async def closed_senders() -> Any:
    """Every sender's lane tasks are stopped after its test, whatever it left running."""
    yield
    while _SENDERS:
        await _SENDERS.pop().close()


def _sender(producer: FakeProducer, **options: Any) -> tuple[BatchSender, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry)
    options = {"partitions": 6, "max_in_flight_batches": 100, "enqueue_policy": NO_WAIT, **options}
    sender = BatchSender(producer, "t", metrics=metrics, **options)
    _SENDERS.append(sender)
    return sender, registry


async def handed_over(sender: BatchSender, producer: FakeProducer, batches: int) -> None:
    """Wait until the lanes have offered ``batches`` batches to the client (or 2 s)."""
    for _ in range(200):
        if len(producer.offered) >= batches and not sender.queued:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(producer.offered)} batches offered, waited for {batches}")


async def failed(sender: BatchSender) -> None:
    await asyncio.wait_for(sender.failed.wait(), 2)


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
        await handed_over(sender, producer, 1)
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
        await handed_over(sender, producer, 3)
        assert [4, 4, 2] == [len(batch.records) for _, batch, _ in producer.sent]
        assert all(batch.closed for _, batch, _ in producer.sent)

    async def test_record_too_big_for_empty_batch(self) -> None:
        """A record no batch can hold is a fatal error naming the setting, not a silent drop."""
        producer = FakeProducer(max_value=1)
        sender, _ = _sender(producer, partitions=1)
        await sender.send(_records(1), 1)
        await failed(sender)
        with pytest.raises(DeliveryFailedError, match="--batch-size"):
            await sender.send(_records(1), 1)
        assert ([], _records(1)) == (producer.offered, sender.unacknowledged())

    async def test_record_too_big_after_a_full_batch(self) -> None:
        """A too-big record right after a full batch is caught too, and nothing is sent."""
        producer = FakeProducer(capacity=2, max_value=3)
        sender, _ = _sender(producer, partitions=1)
        records = [(b"sensor-0000", b"v0"), (b"sensor-0000", b"v1"), (b"sensor-0000", b"v2345")]
        await sender.send(records, 1)
        await failed(sender)
        assert "5-byte record" in str(sender.failure)
        assert ([], records) == (producer.offered, sender.unacknowledged())

    async def test_record_too_big_in_another_partition(self) -> None:
        """A partition's too-big record stops delivery; the others' records are accounted for."""
        keys = [f"sensor-{i:04d}".encode() for i in range(20)]
        first = next(k for k in keys if partition_for(k, 2) == 0)
        second = next(k for k in keys if partition_for(k, 2) == 1)
        records = [(first, b"v0"), (second, b"v1"), (second, b"v2345"), (first, b"v3")]
        producer = FakeProducer(max_value=3)
        sender, _ = _sender(producer, partitions=2)
        await sender.send(records, 1)
        await failed(sender)
        await asyncio.sleep(0.01)
        for _, _, future in producer.sent:
            future.set_result(None)
        await asyncio.sleep(0)
        counts = sender.counts
        assert "5-byte record" in str(sender.failure)
        assert [[b"v0", b"v3"]] == [batch.values for batch in producer.offered]
        assert (4, 2, 2, 0) == (counts.sent, counts.acked, counts.failed, counts.in_flight)
        assert [records[1], records[2]] == sender.unacknowledged()

    async def test_bounded_in_flight(self) -> None:
        """With 2 batches in flight allowed, a third waits until one is acked."""
        producer = FakeProducer(capacity=1)
        sender, _ = _sender(producer, partitions=1, max_in_flight_batches=2)
        await sender.send(_records(3), 1)
        await asyncio.sleep(0.01)
        before = len(producer.sent)
        producer.sent[0][2].set_result(None)
        await handed_over(sender, producer, 3)
        assert (2, 3) == (before, len(producer.sent))

    async def test_a_stalled_partition_holds_up_no_other(self) -> None:
        """While one partition's client queue stays full (its leader is moving), the other
        partitions' readings keep being handed over, and send() returns."""
        stalled = partition_for(b"sensor-0000", 2)

        class OnePartitionStuck(FakeProducer):
            async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
                if partition == stalled:
                    self.offered.append(batch)
                    await asyncio.Event().wait()
                return await super().send_batch(batch, topic, partition=partition)

        producer = OnePartitionStuck()
        sender, _ = _sender(producer, partitions=2, enqueue_attempt=60)
        for tick in range(5):
            await asyncio.wait_for(sender.send(_records(10, sensors=10), tick), 1)
            await asyncio.sleep(0.01)
        flowing = [batch.values for partition, batch, _ in producer.sent]
        assert 5 * sum(
            partition_for(f"sensor-{i:04d}".encode(), 2) != stalled for i in range(10)
        ) == sum(len(values) for values in flowing)
        assert all(partition != stalled for partition, _, _ in producer.sent)

    async def test_a_full_lane_holds_generation_back(self) -> None:
        """Once a stalled partition's lane holds lane_capacity readings, send() waits."""
        producer = FakeProducer(capacity=1)
        producer.refusals = [KafkaTimeoutError()] * 1_000_000
        sender, _ = _sender(producer, partitions=1, lane_capacity=3)
        await asyncio.wait_for(sender.send(_records(2), 1), 1)
        task = asyncio.create_task(sender.send(_records(2), 2))
        await asyncio.sleep(0.05)
        waiting = not task.done()
        producer.refusals.clear()
        await asyncio.wait_for(task, 2)
        assert waiting


class TestOutage:
    async def test_enqueue_timeout_is_retried_in_place(self) -> None:
        """A batch the client refused (queue full) is offered again, before any later one."""
        producer = FakeProducer(capacity=2)
        producer.refusals = [KafkaTimeoutError(), KafkaConnectionError("broker away")]
        sender, registry = _sender(producer, partitions=1)
        instrument_retries(sender._metrics.retries)
        with capture_logs() as logs:
            await sender.send(_records(6), 1)
            await handed_over(sender, producer, 5)
        first = producer.offered[0]
        assert [first, first, first] == producer.offered[:3]
        assert [[b"v0", b"v1"], [b"v2", b"v3"], [b"v4", b"v5"]] == [
            batch.values for _, batch, _ in producer.sent
        ]
        retries = [log for log in logs if log["event"] == "retry_scheduled"]
        assert [("enqueue batch", 1), ("enqueue batch", 2)] == [
            (log["operation"], log["retry"]) for log in retries
        ]
        assert 2 == registry.get_sample_value(
            "sensorstream_producer_retries_total", {"operation": "enqueue batch"}
        )
        assert (6, 0, 6) == (sender.counts.sent, sender.counts.failed, sender.counts.in_flight)

    async def test_a_queue_that_stays_full_is_retried_after_each_attempt(self) -> None:
        """A hand-over still waiting after enqueue_attempt s is called off and retried."""

        class FullThenFree(FakeProducer):
            async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
                if not self.offered:
                    self.offered.append(batch)
                    await asyncio.Event().wait()  # the partition's queue never drains
                return await super().send_batch(batch, topic, partition=partition)

        producer = FullThenFree()
        sender, _ = _sender(producer, partitions=1, enqueue_attempt=0.01)
        instrument_retries(None)
        with capture_logs() as logs:
            await asyncio.wait_for(sender.send(_records(3), 1), 5)
            await handed_over(sender, producer, 2)
        [retry] = [log for log in logs if log["event"] == "retry_scheduled"]
        assert "the queue of t-0 stayed full for 0.01 s" in retry["error"]
        assert (2, 1) == (len(producer.offered), len(producer.sent))

    async def test_closing_during_a_waiting_hand_over_is_not_a_retry(self) -> None:
        """The shutdown deadline (close) calls off a waiting hand-over; nothing is retried."""

        class NeverFree(FakeProducer):
            async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
                self.offered.append(batch)
                await asyncio.Event().wait()

        producer = NeverFree()
        sender, _ = _sender(producer, partitions=1, enqueue_attempt=0.05)
        records = _records(3)
        await sender.send(records, 1)
        await asyncio.sleep(0.01)
        await sender.close()
        await asyncio.sleep(0.1)  # past the attempt limit: the watchdog must not fire now
        assert (1, records) == (len(producer.offered), sender.unacknowledged())

    async def test_waiting_for_the_broker_keeps_the_order(self) -> None:
        """While the client refuses batches nothing is handed over; afterwards, in order."""
        producer = FakeProducer(capacity=1)
        producer.refusals = [KafkaTimeoutError()] * 1_000_000
        sender, _ = _sender(producer, partitions=1)
        await sender.send(_records(3), 1)
        await asyncio.sleep(0.05)
        during = len(producer.sent)
        producer.refusals.clear()
        await sender.send(_records(1), 2)
        await asyncio.sleep(0.05)
        assert 0 == during
        assert [[b"v0"], [b"v1"], [b"v2"], [b"v0"]] == [
            batch.values for _, batch, _ in producer.sent
        ]


class TestFailure:
    async def test_failed_batch_stops_delivery(self) -> None:
        """A batch the client accepted and then failed is fatal: send raises from then on."""
        producer = FakeProducer(capacity=2)
        sender, _ = _sender(producer, partitions=1)
        await sender.send(_records(4), 1)
        await handed_over(sender, producer, 2)
        producer.sent[0][2].set_exception(TopicAuthorizationFailedError("t"))
        await asyncio.sleep(0)
        assert sender.failed.is_set()
        assert isinstance(sender.failure, DeliveryFailedError)
        message = str(sender.failure)
        assert message.startswith("delivering 2 events to t-0 failed: ")
        assert "TopicAuthorizationFailedError" in message
        with pytest.raises(DeliveryFailedError):
            await sender.send(_records(2), 1)
        assert 2 == len(producer.offered)
        assert {"TopicAuthorizationFailedError": 2} == sender.counts.failed_by_kind

    async def test_refused_for_good_is_fatal_at_once(self) -> None:
        """A non-retriable error handing a batch over is not retried: send raises it."""
        producer = FakeProducer(capacity=2)
        producer.refusals = [TopicAuthorizationFailedError("t")]
        sender, _ = _sender(producer, partitions=1)
        await sender.send(_records(4), 1)
        await failed(sender)
        with pytest.raises(DeliveryFailedError, match="TopicAuthorizationFailedError"):
            await sender.send(_records(4), 1)
        assert (1, 2, 4) == (
            len(producer.offered),
            sender.counts.failed,
            len(sender.unacknowledged()),
        )

    async def test_a_batch_waiting_for_a_slot_is_not_handed_over_after_a_failure(self) -> None:
        """The batch waiting for the slot that a failure frees is not sent; send() raises."""
        producer = FakeProducer(capacity=1)
        sender, _ = _sender(producer, partitions=1, max_in_flight_batches=1)
        await sender.send(_records(2), 1)
        await asyncio.sleep(0.01)
        producer.sent[0][2].set_exception(OutOfOrderSequenceNumber())
        await asyncio.sleep(0.01)
        with pytest.raises(DeliveryFailedError, match="OutOfOrderSequenceNumber"):
            await sender.send(_records(1), 2)
        assert 1 == len(producer.offered)

    async def test_on_failure_sees_every_failed_batch(self) -> None:
        """on_failure is called once per failed batch, with the client's error."""
        producer = FakeProducer(capacity=1)
        failures: list[tuple[str, int]] = []
        sender, _ = _sender(
            producer,
            partitions=1,
            on_failure=lambda exc, n: failures.append((type(exc).__name__, n)),
        )
        await sender.send(_records(2), 1)
        await handed_over(sender, producer, 2)
        producer.sent[0][2].set_exception(OutOfOrderSequenceNumber())
        producer.sent[1][2].set_exception(OutOfOrderSequenceNumber())
        assert await sender.flush(1.0)
        assert [("OutOfOrderSequenceNumber", 1)] * 2 == failures


class TestAccounting:
    async def test_acked_and_failed_counts(self) -> None:
        """Acked and failed batches add up to everything sent; metrics agree."""
        producer = FakeProducer(capacity=5)
        sender, registry = _sender(producer, partitions=1)
        await sender.send(_records(12), 1)
        await handed_over(sender, producer, 3)
        assert 12 == sender.counts.in_flight
        producer.sent[0][2].set_result(None)
        producer.sent[1][2].set_exception(OutOfOrderSequenceNumber())
        producer.sent[2][2].set_result(None)
        assert await sender.flush(1.0)
        counts = sender.counts
        assert (12, 7, 5, 0) == (counts.sent, counts.acked, counts.failed, counts.in_flight)
        assert {"OutOfOrderSequenceNumber": 5} == counts.failed_by_kind

        def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
            return registry.get_sample_value(name, labels or {})

        assert 12 == sample("sensorstream_producer_events_sent_total")
        assert 7 == sample("sensorstream_producer_events_acked_total")
        assert 5 == sample(
            "sensorstream_producer_send_errors_total", {"kind": "OutOfOrderSequenceNumber"}
        )
        assert 2 == sample("sensorstream_producer_send_latency_seconds_count")
        assert 3 == sample("sensorstream_producer_batch_size_events_count")
        assert 0 == sample("sensorstream_producer_events_in_flight")

    async def test_unacknowledged_is_exactly_what_was_not_acked(self) -> None:
        """unacknowledged() lists the records of every batch not acked, failed ones included."""
        producer = FakeProducer(capacity=2)
        sender, _ = _sender(producer, partitions=1)
        records = _records(8)
        await sender.send(records, 1)
        await handed_over(sender, producer, 4)
        producer.sent[0][2].set_result(None)
        producer.sent[1][2].set_exception(OutOfOrderSequenceNumber())
        producer.sent[3][2].set_result(None)
        await asyncio.sleep(0)
        assert records[2:6] == sender.unacknowledged()
        assert sender.counts.sent - sender.counts.acked == len(sender.unacknowledged())

    async def test_closing_leaves_what_was_not_handed_over_in_flight(self) -> None:
        """Closing while batches wait for a slot still accounts for every event sent."""
        producer = FakeProducer(capacity=1)
        sender, _ = _sender(producer, partitions=1, max_in_flight_batches=2)
        records = _records(5)
        await sender.send(records, 1)
        await asyncio.sleep(0.01)
        await sender.close()
        counts = sender.counts
        assert (2, 5, 0, 0, 5) == (
            len(producer.sent),
            counts.sent,
            counts.acked,
            counts.failed,
            counts.in_flight,
        )
        producer.sent[0][2].set_result(None)
        await asyncio.sleep(0)
        assert records[1:] == sender.unacknowledged()

    async def test_closed_while_the_broker_is_away(self) -> None:
        """Closing while a refused batch is retried lists that batch as unacknowledged."""
        producer = FakeProducer(capacity=2)
        producer.refusals = [KafkaTimeoutError()] * 1_000_000
        sender, _ = _sender(producer, partitions=1)
        records = _records(3)
        await sender.send(records, 1)
        await asyncio.sleep(0.02)
        await sender.close()
        assert (records, 3, 0) == (
            sender.unacknowledged(),
            sender.counts.in_flight,
            sender.counts.failed,
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
            (DeliveryFailedError("x"), "DeliveryFailedError"),
            (RuntimeError("x"), "other"),
        ],
    )
    def test_error_kind_is_bounded(self, exc: BaseException, kind: str) -> None:
        """Error labels are class names of Kafka errors, of ours, or a few fixed words."""
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


class TestLaneCapacity:
    @pytest.mark.parametrize(
        ("rate", "partitions", "capacity"),
        [(1_000.0, 2, 2_500), (100.0, 6, 1_000), (None, 6, 20_000), (60_000.0, 6, 50_000)],
    )
    def test_a_lane_holds_seconds_of_its_share_of_the_rate(
        self, rate: float | None, partitions: int, capacity: int
    ) -> None:
        """LANE_SECONDS of the partition's share, at least LANE_MIN; max rate: LANE_CAPACITY."""
        assert capacity == lane_capacity(rate, partitions)
