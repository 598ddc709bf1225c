"""The local Kafka broker behaves as the pipeline relies on (the foundation's acceptance).

Each test talks to the real broker that ``kafka_bootstrap`` started, through aiokafka
only, on a topic of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from kafka_helpers import consume_all, create_topic, new_topic_name
from sensorstream.schema import SensorReading, decode_reading, encode_reading

SENSORS = 20
READINGS = 1_000
GROUP_READ_TIMEOUT = 30.0


def _readings() -> list[SensorReading]:
    return [
        SensorReading(
            schema_version=1,
            event_id=str(uuid.uuid4()),
            sensor_id=f"sensor-{i % SENSORS:04d}",
            seq=i // SENSORS,
            event_time=1_700_000_000_000 + i,
            temperature=20.0 + i % 7,
            humidity=40.0 + i % 11,
        )
        for i in range(READINGS)
    ]


async def _produce(producer: AIOKafkaProducer, topic: str, values: list[bytes]) -> None:
    deliveries = [await producer.send(topic, value) for value in values]
    await asyncio.gather(*deliveries)


class TestIdempotentRoundTrip:
    async def test_all_readings_come_back_in_per_sensor_order(self, kafka_bootstrap: str) -> None:
        """1,000 readings keyed by sensor id through 6 partitions all return, in order per key."""
        topic = new_topic_name("roundtrip")
        await create_topic(kafka_bootstrap, topic, partitions=6)
        sent = _readings()

        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            deliveries = [
                await producer.send(topic, encode_reading(r), key=r.sensor_id.encode())
                for r in sent
            ]
            await asyncio.gather(*deliveries)
        finally:
            await producer.stop()

        records = await consume_all(kafka_bootstrap, topic)
        decoded = [decode_reading(record.value) for record in records]
        received = [r for r in decoded if isinstance(r, SensorReading)]

        assert len(decoded) == len(received)  # no Rejection
        assert sorted(sent, key=lambda r: r.event_id) == sorted(received, key=lambda r: r.event_id)
        assert _seqs_by_sensor(sent) == _seqs_by_sensor(received)
        assert SENSORS == len({(r.key, r.partition) for r in records})  # one partition per key
        assert len({r.partition for r in records}) > 1


def _seqs_by_sensor(readings: Sequence[object]) -> dict[str, list[int | None]]:
    seqs: dict[str, list[int | None]] = defaultdict(list)
    for reading in readings:
        assert isinstance(reading, SensorReading)
        seqs[reading.sensor_id].append(reading.seq)
    return dict(seqs)


class TestConsumerGroupResume:
    async def test_new_member_resumes_at_the_committed_offsets(self, kafka_bootstrap: str) -> None:
        """A new consumer in the group starts where the last one committed: no re-read, no gap."""
        topic = new_topic_name("resume")
        group = new_topic_name("resume-group")
        await create_topic(kafka_bootstrap, topic, partitions=3)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await _produce(producer, topic, [f"{i}".encode() for i in range(100)])
        finally:
            await producer.stop()

        first = await _consume_in_group(kafka_bootstrap, topic, group, at_least=40)
        second = await _consume_in_group(kafka_bootstrap, topic, group, at_least=100 - len(first))

        assert 40 <= len(first) < 100
        assert sorted(int(r.value) for r in first + second) == list(range(100))

    async def test_committed_offsets_are_visible_to_the_group(self, kafka_bootstrap: str) -> None:
        """After a commit the group's offsets equal the positions it consumed to."""
        topic = new_topic_name("offsets")
        group = new_topic_name("offsets-group")
        await create_topic(kafka_bootstrap, topic, partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await _produce(producer, topic, [b"x"] * 10)
        finally:
            await producer.stop()

        consumed = await _consume_in_group(kafka_bootstrap, topic, group, at_least=10)

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        assert 10 == len(consumed)
        assert [10] == [meta.offset for meta in offsets.values()]


async def _consume_in_group(
    bootstrap: str, topic: str, group: str, *, at_least: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Join ``group``, read at least ``at_least`` records, commit what was read, leave."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(GROUP_READ_TIMEOUT):
            while len(records) < at_least:
                batches = await consumer.getmany(timeout_ms=500, max_records=at_least)
                for batch in batches.values():
                    records.extend(batch)
        await consumer.commit()
    finally:
        await consumer.stop()
    return records


class TestTransactions:
    async def test_read_committed_sees_only_committed_transactions(
        self, kafka_bootstrap: str
    ) -> None:
        """A read_committed consumer skips an aborted transaction between two committed ones."""
        topic = new_topic_name("txn")
        await create_topic(kafka_bootstrap, topic, partitions=1)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=new_topic_name("txn-producer")
        )
        await producer.start()
        try:
            async with producer.transaction():
                await _produce(producer, topic, [f"committed-{i}".encode() for i in range(10)])
            await producer.begin_transaction()
            await _produce(producer, topic, [f"aborted-{i}".encode() for i in range(10)])
            await producer.abort_transaction()
            async with producer.transaction():
                await _produce(producer, topic, [f"later-{i}".encode() for i in range(5)])
        finally:
            await producer.stop()

        committed = await consume_all(kafka_bootstrap, topic, isolation_level="read_committed")
        everything = await consume_all(kafka_bootstrap, topic, isolation_level="read_uncommitted")

        expected = [f"committed-{i}" for i in range(10)] + [f"later-{i}" for i in range(5)]
        assert expected == [r.value.decode() for r in committed]
        assert 25 == len(everything)  # the aborted records were written, just not visible


@pytest.mark.cluster
class TestThreeNodeCluster:
    async def test_replicated_topic_takes_acks_all_writes(
        self, kafka_cluster_bootstrap: str
    ) -> None:
        """Replication factor 3 with min.insync.replicas=2 accepts acks=all writes on 3 brokers."""
        topic = new_topic_name("replicated")
        await create_topic(
            kafka_cluster_bootstrap,
            topic,
            partitions=3,
            replication_factor=3,
            config={"min.insync.replicas": "2"},
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_cluster_bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            await _produce(producer, topic, [f"{i}".encode() for i in range(300)])
        finally:
            await producer.stop()

        records = await consume_all(kafka_cluster_bootstrap, topic)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster_bootstrap)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()

        assert [1, 2, 3] == sorted(broker["node_id"] for broker in cluster["brokers"])
        assert [[1, 2, 3]] * 3 == [sorted(p["replicas"]) for p in described["partitions"]]
        assert list(range(300)) == sorted(int(r.value) for r in records)
