"""Session fixtures for every test: a real Apache Kafka broker, started only on demand.

``kafka_bootstrap`` starts one KRaft node on free ports with a data dir under pytest's
tmp dir, through ``deploy/kafka/kafkactl.py`` (the same code as ``make kafka-start``),
and stops it when the session ends, also after failures or Ctrl-C. Set
``SENSORSTREAM_TEST_BOOTSTRAP=host:port`` to test against a broker you already run
(and ``SENSORSTREAM_TEST_CLUSTER_BOOTSTRAP`` for the three-node one).

Unit tests never request these fixtures, so ``pytest tests/unit`` starts no JVM.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "kafka"))

import kafkactl

BOOTSTRAP_ENV = "SENSORSTREAM_TEST_BOOTSTRAP"
CLUSTER_BOOTSTRAP_ENV = "SENSORSTREAM_TEST_CLUSTER_BOOTSTRAP"
START_ATTEMPTS = 2


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(kafkactl.free_port())
    return sorted(ports)


def _run_kafka(tmp_path_factory: pytest.TempPathFactory, nodes: int) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp(f"kafka-{nodes}-node")
    # Belt and braces: if the session dies before the finally below runs.
    atexit.register(kafkactl.stop, data_dir, grace=5)
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = _distinct_free_ports(2 * nodes)  # another process may take one meanwhile
            try:
                cluster = kafkactl.start(
                    nodes=nodes,
                    ports=ports[:nodes],
                    controller_ports=ports[nodes:],
                    data_dir=data_dir,
                )
                break
            except kafkactl.KafkactlError as exc:
                if attempt == START_ATTEMPTS:
                    pytest.exit(f"could not start the test Kafka broker: {exc}", returncode=1)
        yield cluster.bootstrap
    finally:
        kafkactl.stop(data_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real single-node Kafka broker for the whole session."""
    if existing := os.environ.get(BOOTSTRAP_ENV):
        yield existing
        return
    yield from _run_kafka(tmp_path_factory, nodes=1)


@pytest.fixture(scope="session")
def kafka_cluster_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Comma-joined addresses of a real three-node Kafka cluster (RF 3, min ISR 2)."""
    if existing := os.environ.get(CLUSTER_BOOTSTRAP_ENV):
        yield existing
        return
    yield from _run_kafka(tmp_path_factory, nodes=3)
