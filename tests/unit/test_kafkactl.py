"""kafkactl's logic that needs no JVM: config, ports, state and the protocol probe."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import kafkactl
import pytest


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


class TestServerProperties:
    def test_single_node_replicates_internal_topics_once(self, tmp_path: Path) -> None:
        """One node: every replication factor and min ISR is 1, else groups never form."""
        props = _properties(
            kafkactl.server_properties(
                node_id=1, ports=[9092], controller_ports=[9192], log_dir=tmp_path
            )
        )

        assert "1@127.0.0.1:9192" == props["controller.quorum.voters"]
        assert "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9192" == props["listeners"]
        assert {"1"} == {
            props["offsets.topic.replication.factor"],
            props["transaction.state.log.replication.factor"],
            props["transaction.state.log.min.isr"],
            props["min.insync.replicas"],
        }
        assert "false" == props["auto.create.topics.enable"]
        assert "0" == props["group.initial.rebalance.delay.ms"]

    def test_three_nodes_replicate_thrice_with_min_isr_two(self, tmp_path: Path) -> None:
        """Three nodes share one voter list; internal topics get RF 3 and min ISR 2."""
        props = _properties(
            kafkactl.server_properties(
                node_id=2,
                ports=[9092, 9093, 9094],
                controller_ports=[9192, 9193, 9194],
                log_dir=tmp_path,
            )
        )

        assert (
            "1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194"
            == (props["controller.quorum.voters"])
        )
        assert "PLAINTEXT://127.0.0.1:9093" == props["advertised.listeners"]
        assert ("3", "2") == (
            props["offsets.topic.replication.factor"],
            props["min.insync.replicas"],
        )


class TestClusterId:
    def test_looks_like_kafka_random_uuid(self) -> None:
        """22 URL-safe base64 characters that never start with a dash."""
        ids = {kafkactl.new_cluster_id() for _ in range(200)}

        assert 200 == len(ids)
        assert all(len(i) == 22 and not i.startswith("-") for i in ids)


class TestVersion:
    def test_read_from_the_pom(self) -> None:
        """The Kafka version is the pom's kafka.version property."""
        assert kafkactl.kafka_version().startswith("4.")


class TestStartRefusals:
    def test_port_in_use_names_the_port(self, tmp_path: Path, busy_port: int) -> None:
        """A taken port fails fast with a message naming it, before any JVM starts."""
        with pytest.raises(kafkactl.KafkactlError, match=f"port {busy_port} is already in use"):
            kafkactl.start(
                ports=[busy_port], controller_ports=[kafkactl.free_port()], data_dir=tmp_path
            )

    def test_only_one_or_three_nodes(self, tmp_path: Path) -> None:
        """Two nodes cannot keep a quorum through one failure, so they are refused."""
        with pytest.raises(kafkactl.KafkactlError, match="1 or 3"):
            kafkactl.start(nodes=2, data_dir=tmp_path)


class TestStatusAndStop:
    def test_nothing_running_in_an_empty_data_dir(self, tmp_path: Path) -> None:
        """status is None and stop is a no-op when no state file exists."""
        assert kafkactl.status(tmp_path) is None
        assert kafkactl.stop(tmp_path) is False

    def test_status_command_exits_3_when_not_running(self, tmp_path: Path) -> None:
        """`kafkactl status` exits 3 when nothing runs (0 is reserved for running)."""
        assert kafkactl.EXIT_NOT_RUNNING == kafkactl.main(["status", "--data-dir", str(tmp_path)])

    def test_stale_state_is_not_running(self, tmp_path: Path) -> None:
        """A state file whose pid is not a broker of this data dir counts as not running."""
        cluster = kafkactl.KafkaCluster(
            version="4.1.1",
            data_dir=str(tmp_path),
            nodes=(kafkactl.KafkaNode(node_id=1, port=1, controller_port=2, pid=1, log="x"),),
        )
        kafkactl._write_state(cluster)

        assert kafkactl.status(tmp_path) is None
        assert kafkactl.stop(tmp_path) is False
        assert not (tmp_path / kafkactl.STATE_FILE).exists()


class TestProbeParsing:
    def test_api_versions_v0(self) -> None:
        """ApiVersions v0: error code, then (key, min, max) triples."""
        body = (
            struct.pack(">hi", 0, 2) + struct.pack(">hhh", 3, 4, 13) + struct.pack(">hhh", 18, 0, 4)
        )

        assert {3: (4, 13), 18: (0, 4)} == kafkactl.parse_api_versions(body)

    def test_metadata_brokers(self) -> None:
        """Metadata v4+: throttle time, then brokers with host, port and nullable rack."""
        body = struct.pack(">ii", 0, 2)
        body += struct.pack(">ih", 1, 9) + b"127.0.0.1" + struct.pack(">ih", 9092, -1)
        body += struct.pack(">ih", 2, 9) + b"127.0.0.1" + struct.pack(">ih", 9093, 2) + b"r2"

        assert [1, 2] == kafkactl.parse_metadata_brokers(body)
