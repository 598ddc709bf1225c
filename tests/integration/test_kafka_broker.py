"""The local Kafka broker behaves as the pipeline relies on (the foundation's acceptance).

Each test talks to a real broker through aiokafka only, on a topic of its own: the
shared ``kafka_bootstrap`` / ``kafka_cluster_bootstrap`` ones, or, for the outage and
failover tests that take nodes down, brokers of the test's own (``outage_kafka``,
``failover_cluster``). The security tests use the SASL_SSL and mTLS listeners of
``secure_kafka`` (one node) and ``secure_kafka_cluster`` (the shared three nodes); their
refusals are asserted on ``aiokafka.conn.create_conn``, where the raw error surfaces.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import kafkactl
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from aiokafka.helpers import create_ssl_context

from kafka_helpers import consume_all, create_topic, new_topic_name
from kafka_security import SecureKafka
from sensorstream.schema import SensorReading, decode_reading, encode_reading

if TYPE_CHECKING:
    from conftest import FailoverCluster, OutageKafka

SENSORS = 20
READINGS = 1_000
GROUP_READ_TIMEOUT = 30.0
# Outage and failover: records sent at a steady pace, and bounds on how long the cluster
# may take to react (measured: a restart 3-6 s, a failover 3-7 s).
FEED_INTERVAL = 0.02
FEED_BATCH = 20
FAILOVER_TIMEOUT = 20.0
REJOIN_TIMEOUT = 30.0
POLL_INTERVAL = 0.1

T = TypeVar("T")


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
    bootstrap: str,
    topic: str,
    group: str,
    *,
    at_least: int,
    client_config: Mapping[str, Any] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Join ``group``, read at least ``at_least`` records, commit what was read, leave.

    ``client_config``: aiokafka's security arguments, e.g. ``SecureKafka.ssl_client_config()``.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **(client_config or {}),
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


class _SteadyFeed:
    """Sends ``"<n>"`` for n = ``first``, ``first + 1``, ... to one topic every FEED_INTERVAL s.

    ``run`` keeps sending (a send only queues the record while the broker is away) until
    ``finish``; ``deliveries`` holds every record's delivery future, in order.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, *, first: int) -> None:
        self._producer = producer
        self._topic = topic
        self._finished = asyncio.Event()
        self._progress = asyncio.Condition()
        self.sent = first
        self.deliveries: list[asyncio.Future[object]] = []

    async def run(self) -> None:
        while not self._finished.is_set():
            delivery = await self._producer.send(self._topic, str(self.sent).encode())
            self.deliveries.append(delivery)
            self.sent += 1
            async with self._progress:
                self._progress.notify_all()
            await asyncio.sleep(FEED_INTERVAL)

    async def wait_until_sent(self, count: int) -> None:
        """Return once ``count`` records are sent (queued, not necessarily acked)."""
        async with asyncio.timeout(FEED_INTERVAL * count + 10), self._progress:
            await self._progress.wait_for(lambda: self.sent >= count)

    def finish(self) -> None:
        self._finished.set()


async def _eventually(
    ask: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, within: float
) -> T:
    """Ask every POLL_INTERVAL s until ``accept`` takes the answer; return that answer."""
    deadline = asyncio.get_running_loop().time() + within
    while not accept(answer := await ask()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"no acceptable answer within {within} s; last: {answer!r}")
        await asyncio.sleep(POLL_INTERVAL)
    return answer


class TestBrokerOutage:
    @pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
    async def test_idempotent_producer_delivers_exactly_once_across_an_outage(
        self, outage_kafka: OutageKafka, hard: bool
    ) -> None:
        """Records acked before, and sent during and after, a broker outage all arrive once."""
        bootstrap = outage_kafka.bootstrap
        topic = new_topic_name("outage")
        await create_topic(bootstrap, topic, partitions=1)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            await _produce(producer, topic, [f"{i}".encode() for i in range(100)])
            feed = _SteadyFeed(producer, topic, first=100)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(feed.run())
                await feed.wait_until_sent(100 + FEED_BATCH)
                await outage_kafka.stop_async(hard=hard)
                down_at = feed.sent
                await feed.wait_until_sent(down_at + FEED_BATCH)
                await outage_kafka.start_async()
                up_at = feed.sent
                await feed.wait_until_sent(up_at + FEED_BATCH)
                feed.finish()
            await asyncio.gather(*feed.deliveries)
        finally:
            await producer.stop()

        records = await consume_all(bootstrap, topic)

        assert up_at - down_at >= FEED_BATCH  # these were sent while the broker was down
        assert list(range(feed.sent)) == [int(r.value) for r in records]


class TestBrokerRestart:
    async def test_stop_then_start_on_the_same_ports_keeps_topics_and_offsets(
        self, outage_kafka: OutageKafka
    ) -> None:
        """kafkactl stop, then start on the same ports and data dir: records, offsets are back."""
        bootstrap = outage_kafka.bootstrap
        topic = new_topic_name("restart")
        group = new_topic_name("restart-group")
        await create_topic(bootstrap, topic, partitions=3)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await _produce(producer, topic, [f"{i}".encode() for i in range(100)])
        finally:
            await producer.stop()
        await _consume_in_group(bootstrap, topic, group, at_least=100)
        (node,) = outage_kafka.nodes

        await asyncio.to_thread(kafkactl.stop, outage_kafka.data_dir)
        forgotten = kafkactl.recorded(outage_kafka.data_dir)
        await asyncio.to_thread(
            kafkactl.start,
            ports=[node.port],
            controller_ports=[node.controller_port],
            data_dir=outage_kafka.data_dir,
        )

        records = await consume_all(bootstrap, topic)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            # While the restarted coordinator still loads __consumer_offsets it answers
            # COORDINATOR_LOAD_IN_PROGRESS, which aiokafka's admin returns as no offsets.
            offsets = await _eventually(
                lambda: admin.list_consumer_group_offsets(group), bool, within=REJOIN_TIMEOUT
            )
        finally:
            await admin.close()
        assert forgotten is None
        assert list(range(100)) == sorted(int(r.value) for r in records)
        assert 100 == sum(meta.offset for meta in offsets.values())


@pytest.mark.cluster
class TestLeaderFailover:
    async def test_killed_leader_is_replaced_and_rejoins_the_isr(
        self, failover_cluster: FailoverCluster
    ) -> None:
        """SIGKILL a partition's leader: another node leads, acks=all writes go on, it rejoins."""
        cluster = failover_cluster
        topic = new_topic_name("failover")
        await create_topic(
            cluster.bootstrap,
            topic,
            partitions=1,
            replication_factor=3,
            config={"min.insync.replicas": "2"},
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            await _produce(producer, topic, [f"{i}".encode() for i in range(100)])
            old_leader = await cluster.leader_of(topic, 0)

            await cluster.stop_node_async(old_leader, hard=True)
            # Acked by the two replicas left, once the controller has fenced the dead one.
            await _produce(producer, topic, [f"{i}".encode() for i in range(100, 200)])
            new_leader = await _eventually(
                lambda: cluster.leader_of(topic, 0),
                lambda leader: leader not in (-1, old_leader),
                within=FAILOVER_TIMEOUT,
            )
            isr_while_down = await cluster.isr_of(topic, 0)

            await cluster.start_node_async(old_leader)
            await _produce(producer, topic, [f"{i}".encode() for i in range(200, 300)])
            isr = await _eventually(
                lambda: cluster.isr_of(topic, 0),
                lambda isr: old_leader in isr,
                within=REJOIN_TIMEOUT,
            )
        finally:
            await producer.stop()

        records = await consume_all(cluster.bootstrap, topic)

        others = sorted({1, 2, 3} - {old_leader})
        assert new_leader in others
        assert others == isr_while_down
        assert [1, 2, 3] == isr
        assert list(range(300)) == [int(r.value) for r in records]


SECURE_RECORDS = 100
CONNECT_TIMEOUT_MS = 10_000


async def _secure_round_trip(
    bootstrap: str, topic: str, client_config: Mapping[str, Any], *, count: int = SECURE_RECORDS
) -> list[int]:
    """Produce ``0..count-1`` (acks=all, idempotent), read them back in a group; sorted."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **client_config
    )
    await producer.start()
    try:
        await _produce(producer, topic, [f"{i}".encode() for i in range(count)])
    finally:
        await producer.stop()
    records = await _consume_in_group(
        bootstrap,
        topic,
        new_topic_name("secure-group"),
        at_least=count,
        client_config=client_config,
    )
    return sorted(int(r.value) for r in records)


async def _connect(bootstrap: str, client_config: Mapping[str, Any]) -> None:
    """Open (and close) one connection to the first address, raising whatever refuses it."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    conn = await create_conn(
        host, int(port), request_timeout_ms=CONNECT_TIMEOUT_MS, **client_config
    )
    conn.close()


class TestSaslSsl:
    @pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
    async def test_round_trip_with_each_mechanism(
        self, secure_kafka: SecureKafka, mechanism: str
    ) -> None:
        """Producer and consumer group logged in with ``mechanism`` over TLS get all records."""
        topic = new_topic_name("sasl-ssl")
        await create_topic(secure_kafka.bootstrap, topic, partitions=2)

        received = await _secure_round_trip(
            secure_kafka.sasl_ssl_bootstrap, topic, secure_kafka.sasl_ssl_client_config(mechanism)
        )

        assert list(range(SECURE_RECORDS)) == received

    async def test_a_wrong_scram_password_is_refused(self, secure_kafka: SecureKafka) -> None:
        """SCRAM-SHA-512 with a wrong password fails the SASL exchange, at connect time."""
        config = secure_kafka.sasl_ssl_client_config("SCRAM-SHA-512", password="not-it")

        with pytest.raises(SaslAuthenticationFailed, match="invalid credentials"):
            await _connect(secure_kafka.sasl_ssl_bootstrap, config)

    async def test_the_right_scram_password_connects(self, secure_kafka: SecureKafka) -> None:
        """The same connection with the data dir's password succeeds (the refusal above is real)."""
        await _connect(
            secure_kafka.sasl_ssl_bootstrap, secure_kafka.sasl_ssl_client_config("SCRAM-SHA-512")
        )


class TestMutualTls:
    async def test_round_trip_with_the_client_certificate(self, secure_kafka: SecureKafka) -> None:
        """With client.pem and its encrypted key, producer and consumer group work over SSL."""
        topic = new_topic_name("mtls")
        await create_topic(secure_kafka.bootstrap, topic, partitions=2)

        received = await _secure_round_trip(
            secure_kafka.ssl_bootstrap, topic, secure_kafka.ssl_client_config()
        )

        assert list(range(SECURE_RECORDS)) == received

    async def test_a_client_without_a_certificate_is_refused(
        self, secure_kafka: SecureKafka
    ) -> None:
        """The SSL listener requires a client certificate: without one the broker sends an alert."""
        config = {
            "security_protocol": "SSL",
            "ssl_context": create_ssl_context(cafile=secure_kafka.ca_file),
        }

        with pytest.raises(KafkaConnectionError) as refused:
            await _connect(secure_kafka.ssl_bootstrap, config)

        _assert_tls_alert(refused.value)

    @pytest.mark.parametrize(
        ("expired", "other_ca"), [(True, False), (False, True)], ids=["expired", "other-ca"]
    )
    async def test_a_certificate_the_broker_cannot_trust_is_refused(
        self, secure_kafka: SecureKafka, tmp_path: Path, expired: bool, other_ca: bool
    ) -> None:
        """An expired client certificate, or one from another CA, is refused with an alert."""
        certfile, keyfile = secure_kafka.issue_client_certificate(
            tmp_path, expired=expired, other_ca=other_ca
        )

        with pytest.raises(KafkaConnectionError) as refused:
            await _connect(
                secure_kafka.ssl_bootstrap, secure_kafka.ssl_client_config(certfile, keyfile)
            )

        _assert_tls_alert(refused.value)

    async def test_a_fresh_certificate_of_the_broker_ca_connects(
        self, secure_kafka: SecureKafka, tmp_path: Path
    ) -> None:
        """A newly issued certificate of the broker's CA is accepted (the refusals are real)."""
        certfile, keyfile = secure_kafka.issue_client_certificate(tmp_path)

        await _connect(
            secure_kafka.ssl_bootstrap, secure_kafka.ssl_client_config(certfile, keyfile)
        )


def _assert_tls_alert(refused: KafkaConnectionError) -> None:
    """The broker refused the handshake with a TLS alert.

    With TLS 1.3 the client finishes its side of the handshake first; the broker's alert
    then closes the connection, which aiokafka raises with the ``ssl.SSLError`` as cause.
    """
    cause = refused.__cause__
    assert isinstance(cause, ssl.SSLError), repr(cause)
    assert cause.reason.startswith("SSLV3_ALERT_"), cause.reason


# Last in the module: the shared three-node cluster starts here and runs to the end of
# the session, so it never shares the CPU with the failover test's own three nodes. Its
# secure listeners are tested right after its PLAINTEXT one.
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


@pytest.mark.cluster
class TestSecureThreeNodeCluster:
    async def test_scram_round_trip_across_three_nodes(
        self, secure_kafka_cluster: SecureKafka
    ) -> None:
        """Over SASL_SSL with SCRAM-SHA-512 every node advertises its own port; RF 3 round trip."""
        secure = secure_kafka_cluster
        topic = new_topic_name("secure-replicated")
        await create_topic(
            secure.bootstrap,
            topic,
            partitions=3,
            replication_factor=3,
            config={"min.insync.replicas": "2"},
        )
        config = secure.sasl_ssl_client_config("SCRAM-SHA-512")

        admin = AIOKafkaAdminClient(bootstrap_servers=secure.sasl_ssl_bootstrap, **config)
        await admin.start()
        try:
            described = await admin.describe_cluster()
        finally:
            await admin.close()
        received = await _secure_round_trip(secure.sasl_ssl_bootstrap, topic, config)

        assert sorted(secure.sasl_ssl_bootstrap.split(",")) == sorted(
            f"{broker['host']}:{broker['port']}" for broker in described["brokers"]
        )
        assert list(range(SECURE_RECORDS)) == received
