"""kafkactl's logic that needs no JVM: config, ports, state, the protocol probe, and the
certificates of ``certs.py`` (checked with in-memory TLS handshakes of Python's ``ssl``).

Node control is tested against stand-in processes whose command line looks like a
broker's (``kafka.Kafka <data-dir>/node-N/server.properties``), so no Java runs.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import certs
import kafkactl
import procctl  # deploy/, on sys.path once kafkactl is imported
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


SLEEPER = "print('ready', flush=True); import time; time.sleep(120)"
TERM_IGNORING_SLEEPER = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEPER


def _fake_broker(data_dir: Path, node_id: int, code: str = SLEEPER) -> subprocess.Popen[bytes]:
    """A process that kafkactl takes for node ``node_id`` of ``data_dir``, once it runs."""
    properties = data_dir / f"node-{node_id}" / "server.properties"
    process = subprocess.Popen(
        [sys.executable, "-c", code, kafkactl.BROKER_MAIN, str(properties)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    with process.stdout:  # it prints nothing more
        assert b"ready\n" == process.stdout.readline()
    return process


def _record(data_dir: Path, pids: list[int]) -> kafkactl.KafkaCluster:
    cluster = kafkactl.KafkaCluster(
        version="4.1.1",
        data_dir=str(data_dir.resolve()),
        nodes=tuple(
            kafkactl.KafkaNode(
                node_id=i,
                port=19091 + i,
                controller_port=19191 + i,
                pid=pid,
                log=str(data_dir / f"node-{i}" / "server.log"),
            )
            for i, pid in enumerate(pids, start=1)
        ),
    )
    kafkactl._write_state(cluster)
    return cluster


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[kafkactl.KafkaCluster]:
    """A recorded three-node cluster of stand-in brokers, all up."""
    processes = [_fake_broker(tmp_path, i) for i in (1, 2, 3)]
    try:
        yield _record(tmp_path, [p.pid for p in processes])
    finally:
        for process in processes:
            process.kill()
            process.wait()


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

    @pytest.mark.parametrize("nodes", [1, 3])
    def test_a_silent_broker_is_fenced_within_seconds(self, tmp_path: Path, nodes: int) -> None:
        """Heartbeats every 0.5 s, fenced after 3 s: quick failover, quick return after a crash."""
        props = _properties(
            kafkactl.server_properties(
                node_id=1,
                ports=[9092 + i for i in range(nodes)],
                controller_ports=[9192 + i for i in range(nodes)],
                log_dir=tmp_path,
            )
        )

        assert ("500", "3000") == (
            props["broker.heartbeat.interval.ms"],
            props["broker.session.timeout.ms"],
        )

    def test_follower_lag_keeps_kafkas_default(self, tmp_path: Path) -> None:
        """replica.lag.time.max.ms stays: fencing, not lag, drops a dead node from the ISRs."""
        props = _properties(
            kafkactl.server_properties(
                node_id=1, ports=[9092, 9093, 9094], controller_ports=[1, 2, 3], log_dir=tmp_path
            )
        )

        assert "replica.lag.time.max.ms" not in props


SECURE_FILES = kafkactl.SecurityFiles(Path("/data/security"))


def _secure_properties(node_id: int, nodes: int, **overrides: object) -> dict[str, str]:
    arguments: dict[str, object] = {
        "node_id": node_id,
        "ports": [9092 + i for i in range(nodes)],
        "controller_ports": [9192 + i for i in range(nodes)],
        "log_dir": Path("/data/node/data"),
        "security": "sasl_ssl",
        "sasl_ssl_ports": [9292 + i for i in range(nodes)],
        "ssl_ports": [9392 + i for i in range(nodes)],
        "security_files": SECURE_FILES,
        "sasl_password": "s3cret",
    } | overrides
    return _properties(kafkactl.server_properties(**arguments))  # type: ignore[arg-type]


class TestSecureServerProperties:
    @pytest.mark.parametrize(("node_id", "nodes"), [(1, 1), (2, 3)])
    def test_each_node_adds_its_own_sasl_ssl_and_ssl_listeners(
        self, node_id: int, nodes: int
    ) -> None:
        """PLAINTEXT and CONTROLLER stay; SASL_SSL (+200) and SSL (+300) join, advertised."""
        props = _secure_properties(node_id, nodes)

        i = node_id - 1
        assert (
            f"PLAINTEXT://127.0.0.1:{9092 + i},CONTROLLER://127.0.0.1:{9192 + i},"
            f"SASL_SSL://127.0.0.1:{9292 + i},SSL://127.0.0.1:{9392 + i}"
        ) == props["listeners"]
        assert (
            f"PLAINTEXT://127.0.0.1:{9092 + i},SASL_SSL://127.0.0.1:{9292 + i},"
            f"SSL://127.0.0.1:{9392 + i}"
        ) == props["advertised.listeners"]
        assert (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL"
            == props["listener.security.protocol.map"]
        )

    @pytest.mark.parametrize("nodes", [1, 3])
    def test_brokers_and_controllers_talk_plaintext(self, nodes: int) -> None:
        """Inter-broker and controller traffic stay on the loopback PLAINTEXT listeners."""
        props = _secure_properties(1, nodes)

        assert ("PLAINTEXT", "CONTROLLER") == (
            props["inter.broker.listener.name"],
            props["controller.listener.names"],
        )
        assert "sasl.mechanism.inter.broker.protocol" not in props

    def test_client_certificates_are_required_on_the_ssl_listener_only(self) -> None:
        """ssl.client.auth=required for listener SSL; SASL_SSL clients show no certificate."""
        props = _secure_properties(1, 1)

        assert "required" == props["listener.name.ssl.ssl.client.auth"]
        assert [] == [
            key for key in props if key.endswith("ssl.client.auth") and "name.ssl." not in key
        ]

    def test_sasl_ssl_offers_scram_and_plain(self) -> None:
        """Both SCRAMs and PLAIN are enabled, each with its JAAS config on the SASL_SSL listener."""
        props = _secure_properties(1, 1)

        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        assert "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN" == props["sasl.enabled.mechanisms"]
        assert scram == props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
        assert scram == props["listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config"]
        assert (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            'user_sensorstream="s3cret";'
        ) == props["listener.name.sasl_ssl.plain.sasl.jaas.config"]

    def test_tls_reads_pem_stores_without_a_key_password(self) -> None:
        """The broker's key store and trust store are PEM files of the security dir."""
        props = _secure_properties(1, 1)

        assert ("PEM", "/data/security/broker-keystore.pem") == (
            props["ssl.keystore.type"],
            props["ssl.keystore.location"],
        )
        assert ("PEM", "/data/security/ca.pem") == (
            props["ssl.truststore.type"],
            props["ssl.truststore.location"],
        )
        assert not {"ssl.key.password", "ssl.keystore.password"} & props.keys()

    def test_plaintext_is_exactly_what_it_was(self) -> None:
        """security="plaintext" writes what no security argument writes: no TLS, no SASL."""
        common: dict[str, Any] = {
            "node_id": 1,
            "ports": [9092],
            "controller_ports": [9192],
            "log_dir": Path("/d"),
        }

        plain = kafkactl.server_properties(**common, security="plaintext")

        assert kafkactl.server_properties(**common) == plain
        assert [] == [line for line in plain.splitlines() if "ssl" in line or "sasl" in line]

    def test_security_needs_files_password_and_every_port(self) -> None:
        """A secure node without its files, password or a port per node is refused."""
        with pytest.raises(kafkactl.KafkactlError, match="security files"):
            _secure_properties(1, 1, sasl_password=None)
        with pytest.raises(kafkactl.KafkactlError, match="need 3 SASL_SSL ports"):
            _secure_properties(1, 3, ssl_ports=[9392])


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


class TestStableFreePorts:
    def test_distinct_free_and_below_the_ephemeral_range(self) -> None:
        """No outgoing connection can take such a port while its node is down."""
        low, _ = procctl.ephemeral_port_range()

        ports = kafkactl.stable_free_ports(6)

        assert 6 == len(set(ports))
        assert all(port < low for port in ports)
        assert not any(procctl.port_in_use(port) for port in ports)


class TestNodeDown:
    def test_status_is_none_but_the_cluster_stays_recorded(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """With one node killed, status says "not running" and recorded still has all three."""
        assert kafkactl.stop_node(tmp_path, 2, hard=True) is True

        assert kafkactl.status(tmp_path) is None
        assert three_nodes == kafkactl.recorded(tmp_path)
        assert [1, 3] == [node.node_id for node in kafkactl.live_nodes(tmp_path)]

    def test_sigterm_stops_a_node(self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster) -> None:
        """Without --hard the node gets SIGTERM, and stop_node returns once it is gone."""
        assert kafkactl.stop_node(tmp_path, 1) is True

        assert [2, 3] == [node.node_id for node in kafkactl.live_nodes(tmp_path)]

    def test_sigkill_follows_when_sigterm_is_ignored(self, tmp_path: Path) -> None:
        """A node still up after the grace period is killed."""
        stubborn = _fake_broker(tmp_path, 1, TERM_IGNORING_SLEEPER)
        _record(tmp_path, [stubborn.pid])
        started = time.monotonic()

        assert kafkactl.stop_node(tmp_path, 1, grace=0.3) is True
        assert 0.3 <= time.monotonic() - started < 5
        assert () == kafkactl.live_nodes(tmp_path)
        stubborn.wait(timeout=5)  # already reaped by kafkactl: this only updates the Popen

    def test_stopping_a_stopped_node_is_a_no_op(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """The second stop_node of a node reports that it was not running."""
        kafkactl.stop_node(tmp_path, 3, hard=True)

        assert kafkactl.stop_node(tmp_path, 3, hard=True) is False

    def test_unknown_node_names_the_known_ones(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """Asking for node 4 of three fails with the ids there are."""
        with pytest.raises(kafkactl.KafkactlError, match=r"no node 4 .*\(nodes: 1, 2, 3\)"):
            kafkactl.stop_node(tmp_path, 4)

    def test_nothing_recorded_says_how_to_start(self, tmp_path: Path) -> None:
        """stop_node and start_node on an empty data dir point to `kafkactl start`."""
        with pytest.raises(kafkactl.KafkactlError, match="kafkactl start"):
            kafkactl.stop_node(tmp_path, 1)
        with pytest.raises(kafkactl.KafkactlError, match="kafkactl start"):
            kafkactl.start_node(tmp_path, 1)

    def test_start_node_leaves_a_live_node_alone(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """Starting a node that is up changes nothing (no second process, same pid)."""
        assert three_nodes == kafkactl.start_node(tmp_path, 2)

    def test_start_node_needs_a_quorum(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """With all three down, one node alone can never serve: refused at once."""
        for node_id in (1, 2, 3):
            kafkactl.stop_node(tmp_path, node_id, hard=True)

        with pytest.raises(kafkactl.KafkactlError, match="quorum needs 2"):
            kafkactl.start_node(tmp_path, 1)

    def test_start_node_needs_formatted_data(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """A node whose data dir was never formatted is refused before any JVM starts."""
        kafkactl.stop_node(tmp_path, 1, hard=True)

        with pytest.raises(kafkactl.KafkactlError, match="is not formatted"):
            kafkactl.start_node(tmp_path, 1)

    def test_start_node_names_a_taken_port(
        self, tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another process on the node's own port fails fast with a message naming it."""
        monkeypatch.setattr(kafkactl, "PORT_RELEASE_SECONDS", 0.1)
        processes = [_fake_broker(tmp_path, i) for i in (1, 2)]
        try:
            cluster = _record(tmp_path, [p.pid for p in processes] + [0])  # node 3 down
            on_busy_port = replace(cluster.nodes[2], port=busy_port)
            kafkactl._write_state(replace(cluster, nodes=(*cluster.nodes[:2], on_busy_port)))
            (tmp_path / "node-3" / "data").mkdir(parents=True)
            (tmp_path / "node-3" / "data" / "meta.properties").write_text("version=1\n")

            with pytest.raises(
                kafkactl.KafkactlError, match=f"port {busy_port} of node 3 is in use"
            ):
                kafkactl.start_node(tmp_path, 3)
        finally:
            for process in processes:
                process.kill()
                process.wait()

    def test_a_new_pid_replaces_only_that_node(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """The state file gets the restarted node's pid; ports and the other nodes stay."""
        kafkactl._record_pid(tmp_path.resolve(), 2, 4242)

        recorded = kafkactl.recorded(tmp_path)
        assert recorded is not None
        assert [three_nodes.nodes[0].pid, 4242, three_nodes.nodes[2].pid] == [
            node.pid for node in recorded.nodes
        ]
        assert [node.port for node in three_nodes.nodes] == [node.port for node in recorded.nodes]

    def test_stop_signals_the_live_nodes_and_forgets_the_cluster(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """stop with a node already down stops the rest and removes the state file."""
        kafkactl.stop_node(tmp_path, 1, hard=True)

        assert kafkactl.stop(tmp_path, grace=5) is True
        assert kafkactl.recorded(tmp_path) is None
        assert () == kafkactl.live_nodes(tmp_path)

    def test_a_longer_data_dir_is_another_cluster(self, tmp_path: Path) -> None:
        """A broker of .../run10 is no node of .../run1 (whole path components match)."""
        other = _fake_broker(tmp_path / "run10", 1)
        try:
            assert kafkactl._pid_is_node(other.pid, (tmp_path / "run10").resolve())
            assert not kafkactl._pid_is_node(other.pid, (tmp_path / "run1").resolve())
        finally:
            other.kill()
            other.wait()


class TestNodeCommands:
    def test_node_stop_hard_kills_only_that_node(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """`kafkactl node stop 2 --hard` exits 0 and leaves nodes 1 and 3 up."""
        exit_code = kafkactl.main(["node", "stop", "2", "--hard", "--data-dir", str(tmp_path)])

        assert 0 == exit_code
        assert [1, 3] == [node.node_id for node in kafkactl.live_nodes(tmp_path)]

    def test_status_shows_the_down_node_and_exits_3(
        self,
        tmp_path: Path,
        three_nodes: kafkactl.KafkaCluster,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A degraded cluster is listed node by node, and is not "running" to scripts."""
        kafkactl.stop_node(tmp_path, 2, hard=True)

        exit_code = kafkactl.main(["status", "--data-dir", str(tmp_path)])

        out = capsys.readouterr().out
        assert kafkactl.EXIT_NOT_RUNNING == exit_code
        assert "degraded (1 of 3 down)" in out
        assert "node 2: 127.0.0.1:19093 (controller 127.0.0.1:19193) DOWN" in out

    def test_help_documents_node_and_topics(self) -> None:
        """`kafkactl -h` lists the node and topics commands with examples."""
        text = kafkactl.build_parser().format_help()

        assert "kafkactl node stop 2 --hard" in text
        assert "kafkactl node start 2" in text
        assert "kafkactl topics create" in text


class TestTopology:
    def test_declares_the_four_pipeline_topics(self) -> None:
        """topology.toml declares input, aggregates, alerts and the DLQ, 6 partitions, RF 1."""
        topology = kafkactl.load_topology()

        assert ["sensor-data", "sensor-aggregates", "sensor-alerts", "sensor-data.dlq"] == [
            topic.name for topic in topology.topics
        ]
        assert (6, 1) == (topology.partitions, topology.replication_factor)

    def test_configs_and_minimums_become_strings(self, tmp_path: Path) -> None:
        """TOML integers (a minimum's byte count) are read as Kafka config strings."""
        path = tmp_path / "topology.toml"
        path.write_text(
            "[defaults]\npartitions = 2\nreplication_factor = 3\n"
            '[topics.dlq]\nname = "d"\nconfigs = { "retention.ms" = "1" }\n'
            'minimums = { "max.message.bytes" = 4194304 }\n'
        )

        (topic,) = kafkactl.load_topology(path).topics

        assert kafkactl.DeclaredTopic(
            role="dlq",
            name="d",
            configs={"retention.ms": "1"},
            minimums={"max.message.bytes": "4194304"},
        ) == (topic)

    def test_unreadable_declaration_names_the_file(self, tmp_path: Path) -> None:
        """A declaration without [defaults] fails with the file's path."""
        path = tmp_path / "topology.toml"
        path.write_text('[topics.input]\nname = "x"\n')

        with pytest.raises(kafkactl.KafkactlError, match=r"topology\.toml"):
            kafkactl.load_topology(path)


TOPOLOGY = kafkactl.Topology(
    partitions=6,
    replication_factor=1,
    topics=(
        kafkactl.DeclaredTopic(
            role="input", name="sensor-data", configs={"retention.ms": "604800000"}, minimums={}
        ),
        kafkactl.DeclaredTopic(
            role="dlq",
            name="sensor-data.dlq",
            configs={"retention.ms": "1209600000"},
            minimums={"max.message.bytes": "4194304"},
        ),
    ),
)


class TestTopicCreateArgv:
    def test_declared_topic_takes_the_declaration(self) -> None:
        """Partitions, RF, configs and minimums come from the declaration; min ISR 1 at RF 1."""
        argv = kafkactl.topic_create_argv("sensor-data.dlq", bootstrap="b:1", topology=TOPOLOGY)

        assert [
            "--bootstrap-server", "b:1", "--create", "--topic", "sensor-data.dlq",
            "--partitions", "6", "--replication-factor", "1",
            "--config", "retention.ms=1209600000",
            "--config", "max.message.bytes=4194304",
            "--config", "min.insync.replicas=1",
        ] == argv  # fmt: skip

    def test_three_replicas_need_two_in_sync(self) -> None:
        """With --replication-factor 3 a declared topic gets min.insync.replicas=2."""
        argv = kafkactl.topic_create_argv(
            "sensor-data", bootstrap="b:1", replication_factor=3, topology=TOPOLOGY
        )

        assert "3" == argv[argv.index("--replication-factor") + 1]
        assert "min.insync.replicas=2" in argv

    def test_command_line_wins_per_key(self) -> None:
        """--partitions and each --config key override the declaration; other keys stay."""
        argv = kafkactl.topic_create_argv(
            "sensor-data",
            bootstrap="b:1",
            partitions=12,
            configs=["retention.ms=1000", "min.insync.replicas=1", "cleanup.policy=compact"],
            replication_factor=3,
            topology=TOPOLOGY,
        )

        assert "12" == argv[argv.index("--partitions") + 1]
        assert [
            "retention.ms=1000", "min.insync.replicas=1", "cleanup.policy=compact"
        ] == argv[argv.index("--config") + 1 :: 2]  # fmt: skip

    def test_undeclared_topic_needs_partitions(self) -> None:
        """An undeclared name without --partitions fails, listing the declared names."""
        with pytest.raises(
            kafkactl.KafkactlError, match=r"declared: sensor-data, sensor-data\.dlq"
        ):
            kafkactl.topic_create_argv("scratch", bootstrap="b:1", topology=TOPOLOGY)

    def test_undeclared_topic_gets_only_what_is_asked(self) -> None:
        """An undeclared topic: the given partitions, RF 1, only the given configs."""
        argv = kafkactl.topic_create_argv(
            "scratch", bootstrap="b:1", partitions=3, configs=["a=b"], topology=TOPOLOGY
        )

        assert [
            "--bootstrap-server", "b:1", "--create", "--topic", "scratch",
            "--partitions", "3", "--replication-factor", "1", "--config", "a=b",
        ] == argv  # fmt: skip

    def test_if_not_exists_is_passed_on(self) -> None:
        """if_not_exists adds TopicCommand's --if-not-exists."""
        argv = kafkactl.topic_create_argv(
            "sensor-data", bootstrap="b:1", topology=TOPOLOGY, if_not_exists=True
        )

        assert "--if-not-exists" == argv[-1]

    def test_config_without_equals_is_refused(self) -> None:
        """`--config retention.ms` (no value) is a usage error, before any JVM starts."""
        with pytest.raises(SystemExit) as exit_info:
            kafkactl.main(["topic", "create", "sensor-data", "--config", "retention.ms"])

        assert 2 == exit_info.value.code


class TestTopicCommands:
    @pytest.fixture
    def topic_commands(self, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
        """The TopicCommand argvs kafkactl would run (none runs)."""
        ran: list[list[str]] = []

        def record(argv: list[str]) -> int:
            ran.append(list(argv))
            return 0

        monkeypatch.setattr(kafkactl, "_run_topic_command", record)
        return ran

    def test_topic_create_of_a_declared_name(self, topic_commands: list[list[str]]) -> None:
        """`kafkactl topic create sensor-alerts` needs no --partitions and takes its retention."""
        exit_code = kafkactl.main(["topic", "create", "sensor-alerts", "--bootstrap-server", "b:1"])

        assert 0 == exit_code
        (argv,) = topic_commands
        assert "6" == argv[argv.index("--partitions") + 1]
        assert "retention.ms=2592000000" in argv

    def test_topics_create_makes_every_declared_topic(
        self, topic_commands: list[list[str]]
    ) -> None:
        """`kafkactl topics create -r 3` creates the four topics, skipping existing ones."""
        exit_code = kafkactl.main(
            ["topics", "create", "--bootstrap-server", "b:1", "--replication-factor", "3"]
        )

        assert 0 == exit_code
        assert [topic.name for topic in kafkactl.load_topology().topics] == [
            argv[argv.index("--topic") + 1] for argv in topic_commands
        ]
        assert all("--if-not-exists" in argv for argv in topic_commands)
        assert all("min.insync.replicas=2" in argv for argv in topic_commands)


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


class TestSecurityRecord:
    def test_cluster_json_records_the_security(self, tmp_path: Path) -> None:
        """The first start writes the security beside the cluster id and node count."""
        kafkactl._cluster_id_for(tmp_path, 3, "sasl_ssl")

        recorded = json.loads((tmp_path / "cluster.json").read_text())
        assert (3, "sasl_ssl") == (recorded["nodes"], recorded["security"])

    @pytest.mark.parametrize(
        ("made_with", "started_with"), [("plaintext", "sasl_ssl"), ("sasl_ssl", "plaintext")]
    )
    def test_a_data_dir_keeps_its_security(
        self, tmp_path: Path, made_with: kafkactl.Security, started_with: kafkactl.Security
    ) -> None:
        """Starting a data dir with the other security fails, saying which, before any JVM."""
        kafkactl._cluster_id_for(tmp_path, 1, made_with)
        ports = kafkactl.stable_free_ports(4)

        with pytest.raises(
            kafkactl.KafkactlError,
            match=f"made with --security {made_with}, not {started_with}; "
            f"start it with --security {made_with}",
        ):
            kafkactl.start(
                ports=ports[:1],
                controller_ports=ports[1:2],
                sasl_ssl_ports=ports[2:3],
                ssl_ports=ports[3:],
                security=started_with,
                data_dir=tmp_path,
            )

    def test_cluster_json_from_before_security_is_plaintext(self, tmp_path: Path) -> None:
        """A cluster.json without "security" was made plaintext, and refuses sasl_ssl."""
        (tmp_path / "cluster.json").write_text('{"cluster_id": "abc", "nodes": 1}\n')

        assert "abc" == kafkactl._cluster_id_for(tmp_path, 1, "plaintext")
        with pytest.raises(kafkactl.KafkactlError, match="--security plaintext, not sasl_ssl"):
            kafkactl._cluster_id_for(tmp_path, 1, "sasl_ssl")

    def test_a_running_cluster_of_the_other_security_is_not_reused(
        self, tmp_path: Path, three_nodes: kafkactl.KafkaCluster
    ) -> None:
        """start(security="sasl_ssl") on a running plaintext cluster says to stop it first."""
        with pytest.raises(kafkactl.KafkactlError, match="plaintext cluster already runs"):
            kafkactl.start(nodes=3, security="sasl_ssl", data_dir=tmp_path)

    def test_state_file_from_before_security_loads(self, tmp_path: Path) -> None:
        """Nodes without secure ports read as port 0, the cluster as plaintext."""
        node = {"node_id": 1, "port": 1, "controller_port": 2, "pid": 0, "log": "x"}
        state = {"version": "4.1.1", "data_dir": str(tmp_path), "nodes": [node]}
        (tmp_path / kafkactl.STATE_FILE).write_text(json.dumps(state))

        cluster = kafkactl.recorded(tmp_path)

        assert cluster is not None
        assert ("plaintext", None) == (cluster.security, cluster.security_dir)
        assert (0, 0) == (cluster.nodes[0].sasl_ssl_port, cluster.nodes[0].ssl_port)

    def test_a_plaintext_cluster_has_no_secure_bootstrap(self, tmp_path: Path) -> None:
        """Asking a plaintext cluster for its SASL_SSL addresses says how to get them."""
        cluster = _record(tmp_path, [0])

        with pytest.raises(kafkactl.KafkactlError, match="--security sasl_ssl"):
            _ = cluster.sasl_ssl_bootstrap


class TestSecurePorts:
    def test_default_to_port_plus_200_and_300(self) -> None:
        """Node i's SASL_SSL port is --port + 200 + i, its SSL port --port + 300 + i."""
        assert ([9292, 9293, 9294], [9392, 9393, 9394]) == kafkactl._secure_ports(
            3, 9092, None, None
        )

    def test_explicit_lists_win(self) -> None:
        """Given lists are used as they are (the fixtures pass free ports)."""
        assert ([7], [8]) == kafkactl._secure_ports(1, 9092, [7], [8])

    def test_past_65535_is_refused(self) -> None:
        """--port 65300 would put SSL past the last port: refused with what to change."""
        with pytest.raises(kafkactl.KafkactlError, match="port 65600 is out of range"):
            kafkactl._secure_ports(1, 65300, None, None)

    def test_a_taken_secure_port_is_named(self, tmp_path: Path, busy_port: int) -> None:
        """A SASL_SSL port in use fails fast with a message naming it."""
        ports = kafkactl.stable_free_ports(3)

        with pytest.raises(kafkactl.KafkactlError, match=f"port {busy_port} is already in use"):
            kafkactl.start(
                ports=ports[:1],
                controller_ports=ports[1:2],
                sasl_ssl_ports=[busy_port],
                ssl_ports=ports[2:],
                security="sasl_ssl",
                data_dir=tmp_path,
            )


class TestSaslPassword:
    def test_made_once_owner_only_without_newline(self, tmp_path: Path) -> None:
        """The first call makes a random password (0600, no newline); later calls read it."""
        files = kafkactl.SecurityFiles(tmp_path)

        first = kafkactl._sasl_password(files, formatted=False)
        again = kafkactl._sasl_password(files, formatted=True)

        assert first == again == files.password_file.read_text()
        assert len(first) >= 24
        assert not first.endswith("\n")
        assert 0o600 == files.password_file.stat().st_mode & 0o777

    def test_lost_after_formatting_is_an_error(self, tmp_path: Path) -> None:
        """Formatted nodes hold SCRAM credentials for the old password: no silent new one."""
        files = kafkactl.SecurityFiles(tmp_path)

        with pytest.raises(kafkactl.KafkactlError, match="restore it, or delete the data dir"):
            kafkactl._sasl_password(files, formatted=True)
        assert not files.password_file.exists()


class TestSecureCommands:
    def test_status_shows_the_secure_listeners(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A secure cluster's status names its SASL_SSL and SSL addresses and the security dir."""
        broker = _fake_broker(tmp_path, 1)
        try:
            data_dir = tmp_path.resolve()
            node = kafkactl.KafkaNode(
                node_id=1,
                port=19092,
                controller_port=19192,
                pid=broker.pid,
                log=str(data_dir / "node-1" / "server.log"),
                sasl_ssl_port=19292,
                ssl_port=19392,
            )
            kafkactl._write_state(
                kafkactl.KafkaCluster(
                    version="4.1.1", data_dir=str(data_dir), nodes=(node,), security="sasl_ssl"
                )
            )

            exit_code = kafkactl.main(["status", "--data-dir", str(tmp_path)])
        finally:
            broker.kill()
            broker.wait()

        lines = capsys.readouterr().out.splitlines()
        assert 0 == exit_code
        assert any(line.strip().startswith("SASL_SSL 127.0.0.1:19292 (") for line in lines)
        assert any(line.strip().startswith("SSL 127.0.0.1:19392 (mTLS") for line in lines)
        assert any(f"security dir {data_dir / 'security'}" in line for line in lines)
        assert "127.0.0.1:19092" == lines[-1]  # scripts read the PLAINTEXT bootstrap last

    def test_start_help_offers_the_security_modes(self) -> None:
        """`kafkactl start --security` takes plaintext or sasl_ssl, plaintext by default."""
        args = kafkactl.build_parser().parse_args(["start"])

        assert "plaintext" == args.security
        assert (
            "sasl_ssl"
            == kafkactl.build_parser().parse_args(["start", "--security", "sasl_ssl"]).security
        )
        with pytest.raises(SystemExit):
            kafkactl.build_parser().parse_args(["start", "--security", "ssl"])


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> None:
    """A TLS handshake between two contexts in memory; the failing side's SSLError escapes."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    client_side = client.wrap_bio(to_client, to_server, server_hostname=server_hostname)
    # Each side reads from one BIO and writes into the other's; a few rounds finish TLS 1.3.
    for _ in range(10):
        finished = 0
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                finished += 1
            except ssl.SSLWantReadError:
                pass
        if finished == 2:
            return
    raise AssertionError("the handshake did not finish")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> kafkactl.SecurityFiles:
    """A secure data dir's CA, broker key store and client certificate, made once."""
    files = kafkactl.SecurityFiles(tmp_path_factory.mktemp("data") / kafkactl.SECURITY_DIR)
    assert certs.ensure_local_pki(files) is True
    return files


def _server_context(keystore: Path, *, trust: Path | None = None) -> ssl.SSLContext:
    """The broker's side, from its PEM key store (requiring client certificates if ``trust``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(keystore)
    if trust is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(trust)
    return context


def _client_context(files: kafkactl.SecurityFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=files.ca_file)


class TestCertificates:
    def test_the_ca_is_a_ca_and_signs_the_broker(self, pki: kafkactl.SecurityFiles) -> None:
        """ca.pem is a self-signed CA; the key store's leaf is issued by it, chain included."""
        ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
        chain = x509.load_pem_x509_certificates(pki.broker_keystore_file.read_bytes())

        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        ca.verify_directly_issued_by(ca)
        chain[0].verify_directly_issued_by(ca)
        assert [ca] == chain[1:]

    def test_the_broker_certificate_names_localhost_and_127_0_0_1(
        self, pki: kafkactl.SecurityFiles
    ) -> None:
        """The broker certificate's SANs are DNS:localhost and IP:127.0.0.1, for servers."""
        broker = x509.load_pem_x509_certificates(pki.broker_keystore_file.read_bytes())[0]
        sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

        assert ["localhost"] == sans.get_values_for_type(x509.DNSName)
        assert ["127.0.0.1"] == [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
        assert [ExtendedKeyUsageOID.SERVER_AUTH] == list(
            broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
    def test_clients_verify_the_broker_by_its_names(
        self, pki: kafkactl.SecurityFiles, host: str
    ) -> None:
        """A client trusting ca.pem completes a handshake with the key store, host checked."""
        _handshake(_server_context(pki.broker_keystore_file), _client_context(pki), host)

    def test_any_other_host_name_fails_verification(self, pki: kafkactl.SecurityFiles) -> None:
        """127.0.0.2 is not in the SANs: the client refuses the broker."""
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            _handshake(_server_context(pki.broker_keystore_file), _client_context(pki), "127.0.0.2")

    def test_the_broker_key_is_unencrypted_pkcs8(self, pki: kafkactl.SecurityFiles) -> None:
        """Kafka's PEM key store reads the key without ssl.key.password: plain PKCS#8."""
        text = pki.broker_keystore_file.read_text()

        assert 1 == text.count("-----BEGIN PRIVATE KEY-----")
        assert 2 == text.count("-----BEGIN CERTIFICATE-----")

    def test_the_client_certificate_is_for_clients_and_valid_now(
        self, pki: kafkactl.SecurityFiles
    ) -> None:
        """client.pem is signed by the CA, for clientAuth, and valid now."""
        ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
        client = x509.load_pem_x509_certificate(pki.client_certfile.read_bytes())
        now = datetime.datetime.now(datetime.UTC)

        client.verify_directly_issued_by(ca)
        assert [ExtendedKeyUsageOID.CLIENT_AUTH] == list(
            client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
        assert client.not_valid_before_utc < now < client.not_valid_after_utc

    def test_the_client_key_loads_with_its_password_only(self, pki: kafkactl.SecurityFiles) -> None:
        """The client key is encrypted PKCS#8: ssl loads it with client.key.password only."""
        password = pki.client_key_password_file.read_text()
        context = ssl.create_default_context(cafile=pki.ca_file)

        assert pki.client_keyfile.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert not password.endswith("\n")
        context.load_cert_chain(pki.client_certfile, pki.client_keyfile, password=password)
        with pytest.raises(ssl.SSLError):
            context.load_cert_chain(pki.client_certfile, pki.client_keyfile, password="wrong")

    def test_the_client_certificate_passes_mutual_tls(self, pki: kafkactl.SecurityFiles) -> None:
        """A server that requires certificates from the CA accepts the client's."""
        client = _client_context(pki)
        client.load_cert_chain(
            pki.client_certfile,
            pki.client_keyfile,
            password=pki.client_key_password_file.read_text(),
        )

        _handshake(_server_context(pki.broker_keystore_file, trust=pki.ca_file), client)

    def test_keys_and_passwords_are_owner_only(self, pki: kafkactl.SecurityFiles) -> None:
        """Every file that holds a key or a password is mode 0600, the dir 0700."""
        secrets = [
            pki.ca_key_file,
            pki.broker_keystore_file,
            pki.client_keyfile,
            pki.client_key_password_file,
        ]

        assert [0o600] * 4 == [path.stat().st_mode & 0o777 for path in secrets]
        assert 0o700 == pki.directory.stat().st_mode & 0o777

    def test_made_once_then_reused(self, pki: kafkactl.SecurityFiles) -> None:
        """A restart finds the set complete and changes nothing."""
        before = {path: path.read_bytes() for path in pki.directory.iterdir()}

        assert certs.ensure_local_pki(pki) is False
        assert before == {path: path.read_bytes() for path in pki.directory.iterdir()}

    def test_an_incomplete_set_is_made_anew(self, tmp_path: Path) -> None:
        """With a file missing, all are made again, so everything shares one CA."""
        files = kafkactl.SecurityFiles(tmp_path / "security")
        certs.ensure_local_pki(files)
        old_ca = files.ca_file.read_bytes()
        files.client_keyfile.unlink()

        assert certs.ensure_local_pki(files) is True
        ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        assert old_ca != files.ca_file.read_bytes()
        x509.load_pem_x509_certificate(
            files.client_certfile.read_bytes()
        ).verify_directly_issued_by(ca)

    def test_the_layout_names_the_ca_as_certs_does(self, pki: kafkactl.SecurityFiles) -> None:
        """issue_certificate(security_dir, ...) finds the cluster's CA there."""
        assert (certs.CA_CERT_FILE, certs.CA_KEY_FILE) == (pki.ca_file.name, pki.ca_key_file.name)
        assert pki.ca_file == certs.load_ca(pki.directory).certfile


class TestIssuedCertificates:
    def test_an_expired_client_certificate_ended_in_the_past(
        self, pki: kafkactl.SecurityFiles, tmp_path: Path
    ) -> None:
        """not_valid_after in the past gives an expired certificate that began before it."""
        ended = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)

        issued = certs.issue_certificate(
            pki.directory, tmp_path, "old", client=True, not_valid_after=ended
        )

        cert = x509.load_pem_x509_certificate(issued.certfile.read_bytes())
        assert ended.replace(microsecond=0) == cert.not_valid_after_utc
        assert cert.not_valid_before_utc < cert.not_valid_after_utc
        assert (tmp_path / "old.pem", tmp_path / "old.key") == (issued.certfile, issued.keyfile)

    def test_a_certificate_from_another_ca_fails_mutual_tls(
        self, pki: kafkactl.SecurityFiles, tmp_path: Path
    ) -> None:
        """A client certificate of a CA the server does not trust is refused by the server."""
        other = certs.create_ca(tmp_path / "other", "Other CA")
        issued = certs.issue_certificate(other, tmp_path, "stranger", client=True)
        client = _client_context(pki)
        client.load_cert_chain(issued.certfile, issued.keyfile)

        with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            _handshake(_server_context(pki.broker_keystore_file, trust=pki.ca_file), client)

    def test_a_server_certificate_with_other_sans(
        self, pki: kafkactl.SecurityFiles, tmp_path: Path
    ) -> None:
        """sans become DNS names or IP addresses; the certificate is for servers."""
        issued = certs.issue_certificate(
            pki.directory, tmp_path, "elsewhere", client=False, sans=["kafka.example", "10.0.0.7"]
        )
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(issued.certfile, issued.keyfile)

        _handshake(server, _client_context(pki), "kafka.example")
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(server, _client_context(pki), "127.0.0.1")

    def test_a_key_password_encrypts_the_key(
        self, pki: kafkactl.SecurityFiles, tmp_path: Path
    ) -> None:
        """With key_password the key is encrypted PKCS#8, and owner-only like every key."""
        issued = certs.issue_certificate(
            pki.directory, tmp_path, "locked", client=True, key_password="pw"
        )

        assert issued.keyfile.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert 0o600 == os.stat(issued.keyfile).st_mode & 0o777
        ssl.create_default_context().load_cert_chain(issued.certfile, issued.keyfile, "pw")
