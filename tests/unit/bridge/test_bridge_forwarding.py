"""The forwarder: no PUBACK before Kafka has the record, PUBACKs in arrival order,
redeliveries recognised, bounded in-flight, a failed batch fatal, a full queue retried."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry
from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks

from sensorstream.bridge._dead_letters import DeadLetterBuilder
from sensorstream.bridge._forwarding import Forwarder, partition_for
from sensorstream.bridge._metrics import BridgeMetrics
from sensorstream.bridge._recent import RecentEvents
from sensorstream.runtime import RetryPolicy
from sensorstream.schema import DeadLetterHeaders

PARTITIONS = 6
INPUT, DLQ = "in", "dlq"
NO_WAIT = RetryPolicy(budget=math.inf, wait_initial=0.001, wait_max=0.001, wait_jitter=0)


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def append(self, **record: Any) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append(record)
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Takes batches; the test settles each one's future (``ack``, ``fail``)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.sent: list[tuple[str, int, FakeBatch, asyncio.Future[Any]]] = []
        self.refusals: list[BaseException] = []

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        if self.refusals:
            raise self.refusals.pop(0)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch, future))
        return future

    def to(self, topic: str) -> list[tuple[int, FakeBatch, asyncio.Future[Any]]]:
        return [(p, b, f) for t, p, b, f in self.sent if t == topic]

    async def ack_all(self) -> None:
        for *_, future in self.sent:
            if not future.done():
                future.set_result(None)
        await _turns()


@dataclass
class FakeLink:
    is_open: bool = True
    acked: list[int] = field(default_factory=list)
    paused: bool = False

    def ack(self, mid: int) -> None:
        self.acked.append(mid)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


@dataclass
class Message:
    mid: int
    payload: bytes
    topic: str = "sensors/x/readings"
    qos: int = 1


def reading(sensor: str, seq: int, event_id: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "event_id": event_id or str(uuid.uuid5(uuid.NAMESPACE_OID, f"{sensor}/{seq}")),
            "sensor_id": sensor,
            "seq": seq,
            "event_time": 1_700_000_000_000 + seq,
            "temperature": 21.5,
            "humidity": 40.0,
        }
    )


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def restored_retry_hooks() -> Iterator[None]:
    hooks = get_on_retry_hooks()
    yield
    set_on_retry_hooks(hooks)


@dataclass
class Rig:
    forwarder: Forwarder
    producer: FakeProducer
    link: FakeLink

    async def deliver(self, *messages: Message) -> None:
        for message in messages:
            self.forwarder.receive(message)
        await _turns()


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    yield await _rig()


async def _rig(*, max_in_flight: int = 1000, window: int = 100, capacity: int = 1000) -> Rig:
    producer = FakeProducer(capacity)
    forwarder = Forwarder(
        producer,
        topic=INPUT,
        partitions=PARTITIONS,
        dlq_topic=DLQ,
        dlq_partitions=2,
        dead_letters=DeadLetterBuilder(instance="test", max_bytes=1_000_000),
        recent=RecentEvents(window),
        metrics=BridgeMetrics(CollectorRegistry()),
        max_in_flight=max_in_flight,
        enqueue_attempt=0.05,
        enqueue_policy=NO_WAIT,
    )
    link = FakeLink()
    forwarder.attach(link)
    asyncio.get_running_loop().create_task(forwarder.run())
    return Rig(forwarder, producer, link)


def _two_partition_sensors() -> tuple[str, str]:
    """Two sensor ids on different partitions."""
    first = "sensor-0000"
    for i in range(1, 100):
        other = f"sensor-{i:04d}"
        if partition_for(other.encode(), PARTITIONS) != partition_for(first.encode(), PARTITIONS):
            return first, other
    raise AssertionError("no two partitions")


class TestAcknowledgement:
    async def test_nothing_is_acked_before_kafka_acknowledges(self, rig: Rig) -> None:
        """Handed over is not enough: the PUBACK waits for Kafka's acknowledgement."""
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        assert (1, []) == (len(rig.producer.sent), rig.link.acked)
        await rig.producer.ack_all()
        assert [1] == rig.link.acked

    async def test_acks_keep_arrival_order_across_partitions(self, rig: Rig) -> None:
        """The later partition's batch acknowledged first: still no PUBACK out of order."""
        a, b = _two_partition_sensors()
        await rig.deliver(Message(1, reading(a, 0)), Message(2, reading(b, 0)))
        [(_, _, first), (_, _, second)] = sorted(
            rig.producer.to(INPUT), key=lambda sent: sent[1].records[0]["key"] != a.encode()
        )
        second.set_result(None)
        await _turns()
        assert [] == rig.link.acked
        first.set_result(None)
        await _turns()
        assert [1, 2] == rig.link.acked

    async def test_an_earlier_round_holds_back_a_later_one(self, rig: Rig) -> None:
        """Round 2 acknowledged by Kafka before round 1: both acked once round 1 is, in order."""
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        await rig.deliver(Message(2, reading("sensor-0000", 1)))
        (_, _, one), (_, _, two) = rig.producer.to(INPUT)
        two.set_result(None)
        await _turns()
        assert [] == rig.link.acked
        one.set_result(None)
        await _turns()
        assert [1, 2] == rig.link.acked

    async def test_a_closed_connection_acks_nothing(self, rig: Rig) -> None:
        """Kafka acknowledges after the connection ended: abandoned, the broker redelivers."""
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        rig.link.is_open = False
        await rig.producer.ack_all()
        assert ([], 1) == (rig.link.acked, rig.forwarder.abandoned)

    async def test_qos_0_messages_get_no_puback(self, rig: Rig) -> None:
        """QoS 0 has no acknowledgement: forwarded, never acked."""
        await rig.deliver(Message(0, reading("sensor-0000", 0), qos=0))
        await rig.producer.ack_all()
        assert ([], 1) == (rig.link.acked, rig.forwarder.produced)


class TestRouting:
    async def test_readings_keyed_by_sensor_on_its_partition_value_untouched(
        self, rig: Rig
    ) -> None:
        """Key = sensor id, partition = murmur2 like the producer, value = the payload."""
        payload = reading("sensor-0042", 3)
        await rig.deliver(Message(1, payload))
        [(partition, batch, _)] = rig.producer.to(INPUT)
        assert (partition_for(b"sensor-0042", PARTITIONS), b"sensor-0042", payload) == (
            partition,
            batch.records[0]["key"],
            batch.records[0]["value"],
        )
        assert batch.closed

    async def test_legacy_payloads_are_keyed_by_their_upgraded_id(self, rig: Rig) -> None:
        """A v0 payload (integer sensor id) is forwarded as it is, keyed sensor-0007."""
        payload = (
            b'{"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}'
        )
        await rig.deliver(Message(1, payload))
        [(_, batch, _)] = rig.producer.to(INPUT)
        assert (b"sensor-0007", payload) == (batch.records[0]["key"], batch.records[0]["value"])

    async def test_bad_payloads_go_to_the_dlq_in_the_same_round(self, rig: Rig) -> None:
        """A bad payload is a dead letter; its PUBACK waits for the DLQ's acknowledgement."""
        await rig.deliver(
            Message(1, reading("sensor-0000", 0)), Message(2, b"[1]", topic="sensors/y/readings")
        )
        [(_, letters, dlq_future)] = rig.producer.to(DLQ)
        [(_, _, input_future)] = rig.producer.to(INPUT)
        headers = DeadLetterHeaders.from_kafka_headers(letters.records[0]["headers"])
        assert ("not_object", "mqtt:sensors/y/readings", None) == (
            headers.reason.value,
            headers.original_topic,
            letters.records[0]["key"],
        )
        input_future.set_result(None)
        await _turns()
        assert [] == rig.link.acked
        dlq_future.set_result(None)
        await _turns()
        assert ([1, 2], 1, 1) == (
            rig.link.acked,
            rig.forwarder.produced,
            rig.forwarder.dead_lettered,
        )

    async def test_full_batches_are_split(self) -> None:
        """More records than a batch holds: several batches, all acked before the PUBACKs."""
        rig = await _rig(capacity=2)
        await rig.deliver(*(Message(i, reading("sensor-0000", i)) for i in range(5)))
        assert [2, 2, 1] == [len(b.records) for _, b, _ in rig.producer.to(INPUT)]
        await rig.producer.ack_all()
        assert [0, 1, 2, 3, 4] == rig.link.acked


class TestRedeliveries:
    async def test_a_redelivered_event_is_acked_not_produced_again(self, rig: Rig) -> None:
        """The same event id again (the broker redelivered it): one record, two PUBACKs."""
        payload = reading("sensor-0000", 0)
        await rig.deliver(Message(1, payload))
        await rig.deliver(Message(2, payload))
        assert 1 == len(rig.producer.sent)
        assert [] == rig.link.acked  # the redelivery waits for the original's round
        await rig.producer.ack_all()
        assert ([1, 2], 1) == (rig.link.acked, rig.forwarder.duplicates)

    async def test_a_window_of_zero_produces_repeats(self) -> None:
        """--dedup-window 0: at least once, the repeat is produced too."""
        rig = await _rig(window=0)
        payload = reading("sensor-0000", 0)
        await rig.deliver(Message(1, payload))
        await rig.deliver(Message(2, payload))
        assert 2 == len(rig.producer.sent)


class TestBounds:
    async def test_reading_pauses_at_max_in_flight_and_resumes(self) -> None:
        """At --max-in-flight unacknowledged messages the link is paused, after acks resumed."""
        rig = await _rig(max_in_flight=3)
        await rig.deliver(*(Message(i, reading("sensor-0000", i)) for i in range(3)))
        assert rig.link.paused
        await rig.producer.ack_all()
        assert (False, 0) == (rig.link.paused, rig.forwarder.in_flight)


class TestKafkaTrouble:
    async def test_a_full_queue_is_retried_in_place(self, rig: Rig) -> None:
        """send_batch timing out (broker away) is retried; the messages are acked later."""
        rig.producer.refusals = [KafkaTimeoutError(), KafkaTimeoutError()]
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        await asyncio.sleep(0.05)
        await rig.producer.ack_all()
        assert [1] == rig.link.acked

    async def test_a_failed_batch_stops_all_acks(self, rig: Rig) -> None:
        """A batch Kafka refused for good: fatal, and nothing after it is ever acked."""
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        await rig.deliver(Message(2, reading("sensor-0000", 1)))
        (_, _, one), (_, _, two) = rig.producer.to(INPUT)
        one.set_exception(TopicAuthorizationFailedError())
        two.set_result(None)
        await _turns()
        assert [] == rig.link.acked
        assert rig.forwarder.failed.is_set()
        assert rig.forwarder.failure is not None
        assert "stopped rather than drop or reorder" in str(rig.forwarder.failure)

    async def test_flush_waits_for_kafka(self, rig: Rig) -> None:
        """flush() is True once every message is released, False at its deadline before."""
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        assert not await rig.forwarder.flush(0.05)
        await rig.producer.ack_all()
        assert await rig.forwarder.flush(0.05)


class TestStop:
    async def test_messages_read_after_the_stop_are_left_to_the_broker(self, rig: Rig) -> None:
        """After stop_reading nothing more is taken: unacknowledged, so redelivered later."""
        rig.forwarder.stop_reading()
        await rig.deliver(Message(1, reading("sensor-0000", 0)))
        assert (True, 0, []) == (rig.link.paused, rig.forwarder.in_flight, rig.producer.sent)
