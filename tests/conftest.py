"""Fixtures for every test: real Apache Kafka brokers, started only on demand.

Shared brokers (session scope), for tests that must not disturb them:

- ``kafka_bootstrap``: ``host:port`` of one KRaft node.
- ``kafka_cluster_bootstrap``: comma-joined PLAINTEXT addresses of three nodes (RF 3, min
  ISR 2). The nodes run with ``security="sasl_ssl"``, which adds listeners and leaves the
  PLAINTEXT one as it always was.
- ``secure_kafka`` (``SecureKafka``, ``tests/kafka_security.py``): one node of its own with
  the SASL_SSL and mTLS listeners, its CA, client certificate and SASL password.
- ``secure_kafka_cluster`` (``SecureKafka``): the same view of the three nodes behind
  ``kafka_cluster_bootstrap`` (no second cluster is started for it).

All start on free ports with a data dir under pytest's tmp dir, through
``deploy/kafka/kafkactl.py`` (the same code as ``make kafka-start``), and stop when the
session ends, also after failures or Ctrl-C. Set ``SENSORSTREAM_TEST_BOOTSTRAP=host:port``
to test against a broker you already run (and ``SENSORSTREAM_TEST_CLUSTER_BOOTSTRAP`` for
the three-node one; ``secure_kafka_cluster`` then starts three secure nodes of its own,
since a bare address brings no certificates or password).

Chaos brokers (function scope), each test's own, never the shared ones (the variables
above do not apply to them). Their ports lie below the kernel's ephemeral range, so no
client connection can take one while its node is down; their data is under the test's
``tmp_path``; they are stopped at teardown, also after a failure, whatever the test left
running. Both have ``.bootstrap`` (every node, up or down), ``.live_bootstrap`` (the
nodes up now), ``.nodes`` and ``.data_dir`` (for ``kafkactl`` calls of one's own):

- ``outage_kafka`` (``OutageKafka``): one node to take down and bring back.
  ``.stop(hard=False)`` takes the broker down (SIGTERM; ``hard=True`` SIGKILLs it),
  ``.start()`` brings it back on the same ports and data and returns once it serves.
- ``failover_cluster`` (``FailoverCluster``): three nodes (RF 3, min ISR 2).
  ``.nodes`` (``KafkaNode``: ids, ports, pids), ``.stop_node(node_id, hard=True)``,
  ``.start_node(node_id)`` (returns once the others have it registered again), and the
  async ``leader_of(topic, partition)`` and ``isr_of(topic, partition)``, which ask the
  nodes that are up.

Stopping and starting block for seconds (a start takes 2.5-7 s). An async test awaits the
``*_async`` twins (``await outage_kafka.stop_async(hard=True)``), which run them in a
thread, so its own clients keep running on the event loop meanwhile::

    async def test_producer_rides_out_an_outage(outage_kafka: OutageKafka) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=outage_kafka.bootstrap, acks="all")
        ...
        await outage_kafka.stop_async(hard=True)
        await outage_kafka.start_async()

Unit tests never request these fixtures, so ``pytest tests/unit`` starts no JVM.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "kafka"))

import kafkactl

from kafka_security import SecureKafka

BOOTSTRAP_ENV = "SENSORSTREAM_TEST_BOOTSTRAP"
CLUSTER_BOOTSTRAP_ENV = "SENSORSTREAM_TEST_CLUSTER_BOOTSTRAP"
START_ATTEMPTS = 2
# How long leader_of / isr_of keep asking while the cluster is reshuffling after a
# node went down (the client may first try the dead node, or a node that has not yet
# heard of the topic).
DESCRIBE_BUDGET_SECONDS = 15.0
# A chaos test's data is thrown away with its tmp dir: no clean shutdown to wait for.
TEARDOWN_GRACE_SECONDS = 0.0


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(kafkactl.free_port())
    return sorted(ports)


def _start_kafka(
    data_dir: Path, nodes: int, *, stable_ports: bool, security: kafkactl.Security = "plaintext"
) -> kafkactl.KafkaCluster:
    """Start ``nodes`` nodes from ``data_dir``; a failed attempt is retried on new ports."""
    # Client and controller ports, and with security the SASL_SSL and SSL ones.
    per_node = 2 if security == "plaintext" else 4

    def attempt() -> kafkactl.KafkaCluster:
        # Another process may take a port between the pick and the bind: pick anew.
        if stable_ports:
            ports = kafkactl.stable_free_ports(per_node * nodes)
        else:
            ports = _distinct_free_ports(per_node * nodes)
        by_role = [ports[i * nodes : (i + 1) * nodes] for i in range(per_node)]
        return kafkactl.start(
            nodes=nodes,
            ports=by_role[0],
            controller_ports=by_role[1],
            data_dir=data_dir,
            security=security,
            sasl_ssl_ports=by_role[2] if security != "plaintext" else None,
            ssl_ports=by_role[3] if security != "plaintext" else None,
        )

    for _ in range(START_ATTEMPTS - 1):
        with contextlib.suppress(kafkactl.KafkactlError):
            return attempt()
    return attempt()


@contextlib.contextmanager
def _run_kafka(
    tmp_path_factory: pytest.TempPathFactory,
    nodes: int,
    *,
    security: kafkactl.Security = "plaintext",
) -> Iterator[kafkactl.KafkaCluster]:
    secure = "" if security == "plaintext" else f"-{security}"
    data_dir = tmp_path_factory.mktemp(f"kafka-{nodes}-node{secure}")
    # Belt and braces: if the session dies before the finally below runs.
    atexit.register(kafkactl.stop, data_dir, grace=5)
    try:
        try:
            cluster = _start_kafka(data_dir, nodes, stable_ports=False, security=security)
        except kafkactl.KafkactlError as exc:
            pytest.exit(f"could not start the test Kafka broker: {exc}", returncode=1)
        yield cluster
    finally:
        kafkactl.stop(data_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real single-node Kafka broker for the whole session."""
    if existing := os.environ.get(BOOTSTRAP_ENV):
        yield existing
        return
    with _run_kafka(tmp_path_factory, nodes=1) as cluster:
        yield cluster.bootstrap


@pytest.fixture(scope="session")
def _secure_three_nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[kafkactl.KafkaCluster]:
    """The shared three-node cluster, with the secure listeners beside PLAINTEXT."""
    with _run_kafka(tmp_path_factory, nodes=3, security="sasl_ssl") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_cluster_bootstrap(request: pytest.FixtureRequest) -> str:
    """Comma-joined addresses of a real three-node Kafka cluster (RF 3, min ISR 2)."""
    if existing := os.environ.get(CLUSTER_BOOTSTRAP_ENV):
        return existing
    # Asked for only here: with the variable set, no cluster starts for this fixture.
    cluster: kafkactl.KafkaCluster = request.getfixturevalue("_secure_three_nodes")
    return cluster.bootstrap


@pytest.fixture(scope="session")
def secure_kafka_cluster(_secure_three_nodes: kafkactl.KafkaCluster) -> SecureKafka:
    """The secure listeners of the three nodes behind ``kafka_cluster_bootstrap``.

    With ``SENSORSTREAM_TEST_CLUSTER_BOOTSTRAP`` set, three secure nodes of its own.
    """
    return SecureKafka.of(_secure_three_nodes)


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A single node of its own with SASL_SSL and mTLS listeners (see ``SecureKafka``)."""
    with _run_kafka(tmp_path_factory, nodes=1, security="sasl_ssl") as cluster:
        yield SecureKafka.of(cluster)


# --------------------------------------------------------------------------- chaos


class _ChaosKafka:
    """A test's own Kafka nodes, known by their data dir and the ports they keep."""

    def __init__(self, cluster: kafkactl.KafkaCluster) -> None:
        self.data_dir = Path(cluster.data_dir)
        self.bootstrap = cluster.bootstrap  # all nodes, up or down: ports never change

    @property
    def nodes(self) -> tuple[kafkactl.KafkaNode, ...]:
        """Every node with its id and ports, and its current (or last) pid."""
        cluster = kafkactl.recorded(self.data_dir)
        assert cluster is not None, f"the cluster in {self.data_dir} is no longer recorded"
        return cluster.nodes

    @property
    def live_bootstrap(self) -> str:
        """The addresses of the nodes that are up right now."""
        return ",".join(node.address for node in kafkactl.live_nodes(self.data_dir))


class OutageKafka(_ChaosKafka):
    """One dedicated Kafka node that a test takes down and brings back."""

    def stop(self, *, hard: bool = False) -> None:
        """Take the broker down: SIGTERM (a clean shutdown), or SIGKILL with ``hard``."""
        kafkactl.stop_node(self.data_dir, 1, hard=hard)

    def start(self) -> None:
        """Bring it back on the same ports and data; returns once it serves."""
        kafkactl.start_node(self.data_dir, 1)

    async def stop_async(self, *, hard: bool = False) -> None:
        """``stop`` in a thread, so the test's clients keep running meanwhile."""
        await asyncio.to_thread(self.stop, hard=hard)

    async def start_async(self) -> None:
        """``start`` in a thread, so the test's clients keep running meanwhile."""
        await asyncio.to_thread(self.start)


class FailoverCluster(_ChaosKafka):
    """A dedicated three-node Kafka cluster whose nodes a test kills and restarts."""

    def stop_node(self, node_id: int, *, hard: bool = True) -> None:
        """Kill node ``node_id`` (SIGKILL; SIGTERM for a clean shutdown without ``hard``)."""
        kafkactl.stop_node(self.data_dir, node_id, hard=hard)

    def start_node(self, node_id: int) -> None:
        """Restart node ``node_id``; returns once every live node has it registered."""
        kafkactl.start_node(self.data_dir, node_id)

    async def stop_node_async(self, node_id: int, *, hard: bool = True) -> None:
        """``stop_node`` in a thread, so the test's clients keep running meanwhile."""
        await asyncio.to_thread(self.stop_node, node_id, hard=hard)

    async def start_node_async(self, node_id: int) -> None:
        """``start_node`` in a thread, so the test's clients keep running meanwhile."""
        await asyncio.to_thread(self.start_node, node_id)

    async def leader_of(self, topic: str, partition: int) -> int:
        """The id of the partition's leader as the cluster reports it (-1: none now)."""
        return int((await self._describe(topic, partition))["leader"])

    async def isr_of(self, topic: str, partition: int) -> list[int]:
        """The partition's in-sync replicas as the cluster reports them, sorted."""
        return sorted((await self._describe(topic, partition))["isr"])

    async def _describe(self, topic: str, partition: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DESCRIBE_BUDGET_SECONDS
        while True:
            # A fresh client per question, bootstrapped from the live nodes only: a
            # long-lived one would keep a dead node in its metadata.
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.live_bootstrap, request_timeout_ms=3000
            )
            try:
                await admin.start()
                described: list[dict[str, Any]] = await admin.describe_topics([topic])
            except (KafkaError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                found = [
                    p
                    for t in described
                    if t["error_code"] == 0
                    for p in t["partitions"]
                    if p["partition"] == partition
                ]
                if found:
                    return found[0]
                problem = f"no partition {partition} in {described}"
            finally:
                await admin.close()
            if loop.time() > deadline:
                raise TimeoutError(f"could not describe {topic}-{partition}: {problem}")
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def _chaos_kafka(tmp_path: Path, nodes: int) -> Iterator[kafkactl.KafkaCluster]:
    # A subdirectory of tmp_path, so that no other test's data dir extends its path.
    data_dir = tmp_path / "kafka"
    # If the session dies before the finally runs (a no-op for a data dir already stopped).
    atexit.register(kafkactl.stop, data_dir, grace=TEARDOWN_GRACE_SECONDS)
    try:
        yield _start_kafka(data_dir, nodes, stable_ports=True)
    finally:
        kafkactl.stop(data_dir, grace=TEARDOWN_GRACE_SECONDS)


@pytest.fixture
def outage_kafka(tmp_path: Path) -> Iterator[OutageKafka]:
    """A single Kafka node of this test's own, to stop and start (see ``OutageKafka``)."""
    with _chaos_kafka(tmp_path, nodes=1) as cluster:
        yield OutageKafka(cluster)


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[FailoverCluster]:
    """Three Kafka nodes of this test's own (RF 3, min ISR 2; see ``FailoverCluster``)."""
    with _chaos_kafka(tmp_path, nodes=3) as cluster:
        yield FailoverCluster(cluster)
