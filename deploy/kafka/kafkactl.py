"""Fetch and run a real Apache Kafka broker (KRaft) on this machine, without Docker.

The broker comes from Maven Central (``deploy/kafka/pom.xml`` pins the version) and runs
as plain ``java`` processes: one combined broker+controller node, or three on one host.
The same module backs the ``deploy/kafka/kafkactl`` CLI and the pytest fixtures.

Ports: node ``i`` (0-based) listens for clients on ``port + i`` and for the KRaft
controller quorum on ``controller_port + i`` (default ``port + 100``). So the default
single node is ``127.0.0.1:9092`` (controller 9192); three nodes are 9092-9094
(controllers 9192-9194).

Security (``start(security="sasl_ssl")``, ``kafkactl start --security sasl_ssl``): the
PLAINTEXT listener stays as it is, and each node also gets a SASL_SSL listener on
``port + 200 + i`` (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN, one user ``sensorstream``) and
an SSL listener that requires a client certificate (mTLS) on ``port + 300 + i``. Brokers and
controllers keep talking PLAINTEXT to each other on loopback. The CA and the certificates
come from ``certs.py`` (which needs ``cryptography``, so run under ``uv run``), the SASL
password from here; all are made once per data dir, at the first secure start, and the
SCRAM credentials are written at format time. The SCRAM password briefly shows in the
format command's arguments and stays in ``server.properties`` (mode 0600) for PLAIN: fine
for a broker on loopback, not for a shared host.

Layout:
  .cache/kafka/<version>/libs/     jars resolved by Maven (``.complete`` marks success)
  <data-dir>/state.json            ports and last pids of the cluster's nodes
  <data-dir>/cluster.json          the cluster id, node count and security (kept across restarts)
  <data-dir>/node-<id>/            server.properties, log4j2.xml, server.log, data/
  <data-dir>/security/             secure clusters only: CA, certificates, passwords (0600)

Chaos tests take single nodes down and bring them back (``stop_node``/``start_node``,
``kafkactl node stop|start N``): the state file keeps recording a stopped node, so
``recorded`` still knows its ports while ``status`` reports the cluster as not running.
``stop`` followed by ``start`` with the same ports and data dir restarts a whole
cluster on its existing data.

``kafkactl topic create`` takes the partitions, replication factor and configs of the
pipeline's own topics from their one declaration, ``shared/.../schema/topology.toml``.

This module uses the standard library only, so it runs before ``uv sync`` (only
``--security sasl_ssl`` imports ``certs``, and so ``cryptography``). It must never
touch a process it did not start: ``stop`` only signals the pids in its own state file,
and only while their command line still names that data dir.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Literal, get_args

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # deploy/: procctl
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import procctl
from procctl import free_port as free_port  # kafkactl.free_port: the fixtures use it

__all__ = [
    "DEFAULT_PORT",
    "SASL_MECHANISMS",
    "SASL_USERNAME",
    "SECURITY_MODES",
    "DeclaredTopic",
    "KafkaCluster",
    "KafkaNode",
    "KafkactlError",
    "Security",
    "SecurityFiles",
    "Topology",
    "fetch",
    "kafka_version",
    "live_nodes",
    "load_topology",
    "main",
    "recorded",
    "start",
    "start_node",
    "status",
    "stop",
    "stop_node",
    "topic_create_argv",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).resolve().parent / "pom.xml"
TOPOLOGY_FILE = REPO_ROOT / "shared" / "src" / "sensorstream" / "schema" / "topology.toml"
CACHE_ROOT = REPO_ROOT / ".cache" / "kafka"
DEFAULT_DATA_DIR = CACHE_ROOT / "run"
DEFAULT_PORT = 9092
CONTROLLER_PORT_OFFSET = 100
SASL_SSL_PORT_OFFSET = 200
SSL_PORT_OFFSET = 300
DEFAULT_START_TIMEOUT = 60.0
STOP_GRACE_SECONDS = 20.0
QUORUM_LOST_GRACE_SECONDS = 2.0
PORT_RELEASE_SECONDS = 2.0
MIN_JAVA = 17
HOST = procctl.HOST
STATE_FILE = "state.json"
STATE_LOCK = ".state.lock"
BROKER_MAIN = "kafka.Kafka"
EXIT_NOT_RUNNING = 3
Security = Literal["plaintext", "sasl_ssl"]
SECURITY_MODES: tuple[Security, ...] = get_args(Security)
SECURITY_DIR = "security"
SASL_USERNAME = "sensorstream"
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
SASL_MECHANISMS = (*SCRAM_MECHANISMS, "PLAIN")
# How long the controller waits for a silent broker before fencing it, which also drops
# it from every ISR and moves its leaderships. With Kafka's defaults (heartbeat 2 s,
# session 9 s) a killed node of three holds its partitions for ~9-18 s, and a killed node
# that restarts is refused (DUPLICATE_BROKER_REGISTRATION) until its old session ends:
# a single node took 12 s instead of 4 s to come back. Chaos tests want both in a few
# seconds. Six heartbeats per session still ride out a GC pause or a busy CPU (three
# JVMs on a laptop) without fencing a live broker.
BROKER_HEARTBEAT_INTERVAL_MS = 500
BROKER_SESSION_TIMEOUT_MS = 3000


class KafkactlError(Exception):
    """A failure with a one-line message that says what to do about it."""


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    pid: int
    log: str
    # 0: no such listener (a plaintext cluster, or a state file from before security).
    sasl_ssl_port: int = 0
    ssl_port: int = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def sasl_ssl_address(self) -> str:
        return f"{HOST}:{self.sasl_ssl_port}"

    @property
    def ssl_address(self) -> str:
        return f"{HOST}:{self.ssl_port}"


@dataclass(frozen=True)
class SecurityFiles:
    """Where a secure cluster keeps its CA, certificates and secrets: ``<data-dir>/security``.

    The one declaration of that layout: ``certs.ensure_local_pki`` writes these paths, the
    brokers' ``server.properties`` and the test fixtures read them. Files holding a key
    or a password are mode 0600.
    """

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.directory / "ca.key"

    @property
    def broker_keystore_file(self) -> Path:
        """The broker's PKCS#8 key and certificate chain, Kafka's PEM key store."""
        return self.directory / "broker-keystore.pem"

    @property
    def client_certfile(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_keyfile(self) -> Path:
        """The client's PKCS#8 key, encrypted with ``client_key_password_file``'s password."""
        return self.directory / "client.key"

    @property
    def client_key_password_file(self) -> Path:
        return self.directory / "client.key.password"

    @property
    def password_file(self) -> Path:
        """The SASL password of ``SASL_USERNAME`` (no trailing newline)."""
        return self.directory / f"{SASL_USERNAME}.password"


@dataclass(frozen=True)
class KafkaCluster:
    version: str
    data_dir: str
    nodes: tuple[KafkaNode, ...]
    security: Security = "plaintext"

    @property
    def bootstrap(self) -> str:
        """Comma-joined client addresses, e.g. ``127.0.0.1:9092``."""
        return ",".join(node.address for node in self.nodes)

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """Comma-joined SASL_SSL addresses, e.g. ``127.0.0.1:9292`` (secure clusters only)."""
        self._require_security("sasl_ssl_bootstrap")
        return ",".join(node.sasl_ssl_address for node in self.nodes)

    @property
    def ssl_bootstrap(self) -> str:
        """Comma-joined mTLS (SSL) addresses, e.g. ``127.0.0.1:9392`` (secure clusters only)."""
        self._require_security("ssl_bootstrap")
        return ",".join(node.ssl_address for node in self.nodes)

    @property
    def security_dir(self) -> Path | None:
        """The dir of the CA, certificates and passwords; None for a plaintext cluster."""
        if self.security == "plaintext":
            return None
        return Path(self.data_dir) / SECURITY_DIR

    def _require_security(self, what: str) -> None:
        if self.security == "plaintext":
            raise KafkactlError(
                f"the cluster at {self.data_dir} has no {what}: it runs plaintext only; "
                "start it with --security sasl_ssl"
            )

    def node(self, node_id: int) -> KafkaNode:
        """The node with ``node_id``; KafkactlError naming the known ids if there is none."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        known = ", ".join(str(node.node_id) for node in self.nodes)
        raise KafkactlError(f"no node {node_id} in the cluster at {self.data_dir} (nodes: {known})")


# --------------------------------------------------------------------------- fetch


def kafka_version(pom: Path = POM) -> str:
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if match is None:
        raise KafkactlError(f"no <kafka.version> property in {pom}")
    return match.group(1)


def libs_dir(version: str | None = None) -> Path:
    return CACHE_ROOT / (version or kafka_version()) / "libs"


def classpath(libs: Path) -> str:
    # A literal wildcard: java expands it itself (the shell must not).
    return str(libs / "*")


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkactlError(
            f"java not found on PATH; Kafka needs Java {MIN_JAVA}+ "
            "(apt-get install -y openjdk-17-jre-headless)"
        )
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr)
    if match is not None:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise KafkactlError(f"{java} is Java {major}; Kafka needs Java {MIN_JAVA}+")
    return java


def fetch(version: str | None = None, *, quiet: bool = False) -> Path:
    """Resolve the broker jars with Maven once per version; return the libs dir."""
    version = version or kafka_version()
    libs = libs_dir(version)
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkactlError("mvn not found on PATH; install Maven (apt-get install -y maven)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions may fetch at once; the second waits and then finds the marker.
    with _locked(libs.parent / ".fetch.lock"):
        if marker.exists():
            return libs
        partial = libs.parent / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        if not quiet:
            print(f"kafkactl: fetching Apache Kafka {version} with Maven ...", file=sys.stderr)
        started = time.monotonic()
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
                f"-Dkafka.version={version}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            output = (result.stdout + result.stderr).splitlines()
            errors = [line for line in output if "ERROR" in line] or output or ["no output"]
            raise KafkactlError(f"Maven could not fetch Kafka {version}: {errors[-1].strip()}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        jars = len(list(libs.glob("*.jar")))
        marker.write_text(f"{jars} jars\n")
        if not quiet:
            took = time.monotonic() - started
            print(f"kafkactl: fetched {jars} jars into {libs} in {took:.0f} s", file=sys.stderr)
    return libs


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- config


def new_cluster_id() -> str:
    """The same format as ``StorageTool random-uuid``, without starting a JVM."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # Kafka rejects ids that look like flags
            return cluster_id


def server_properties(
    *,
    node_id: int,
    ports: Sequence[int],
    controller_ports: Sequence[int],
    log_dir: Path,
    security: Security = "plaintext",
    sasl_ssl_ports: Sequence[int] = (),
    ssl_ports: Sequence[int] = (),
    security_files: SecurityFiles | None = None,
    sasl_password: str | None = None,
) -> str:
    """A combined broker+controller node of a ``len(ports)``-node KRaft cluster.

    With ``security="sasl_ssl"`` the node also gets the SASL_SSL and SSL listeners on
    its ``sasl_ssl_ports``/``ssl_ports`` entries (see ``_secure_settings``); without it the
    file is exactly what it always was.
    """
    port = ports[node_id - 1]
    controller_port = controller_ports[node_id - 1]
    voters = ",".join(f"{i}@{HOST}:{p}" for i, p in enumerate(controller_ports, start=1))
    # One node cannot hold three replicas; three nodes keep one write ack-able while one is down.
    replicas, min_isr = (1, 1) if len(ports) == 1 else (3, 2)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": log_dir,
        "num.partitions": 6,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # Our services create their topics explicitly; a typo must fail, not make a topic.
        "auto.create.topics.enable": "false",
        # A local broker: join groups at once, and keep the internal topics small so the
        # first consumer group or transaction does not wait for 50 partitions.
        "group.initial.rebalance.delay.ms": 0,
        "offsets.topic.num.partitions": 6,
        "transaction.state.log.num.partitions": 6,
        "num.network.threads": 2,
        "num.io.threads": 4,
        # Fence a dead broker, and take a restarted one back, within seconds (see
        # BROKER_SESSION_TIMEOUT_MS). Fencing is what shrinks the ISRs of a killed or
        # stopped node, so replica.lag.time.max.ms keeps its 30 s: it only drops a live
        # follower that falls behind, and lowered on a shared CPU it would shrink ISRs,
        # and fail min-ISR-2 writes, with no node down.
        "broker.heartbeat.interval.ms": BROKER_HEARTBEAT_INTERVAL_MS,
        "broker.session.timeout.ms": BROKER_SESSION_TIMEOUT_MS,
    }
    if security != "plaintext":
        if security_files is None or sasl_password is None:
            raise KafkactlError(f"--security {security} needs the security files and a password")
        if len(sasl_ssl_ports) != len(ports) or len(ssl_ports) != len(ports):
            raise KafkactlError(f"need {len(ports)} SASL_SSL ports and {len(ports)} SSL ports")
        sasl_ssl = f"SASL_SSL://{HOST}:{sasl_ssl_ports[node_id - 1]}"
        mtls = f"SSL://{HOST}:{ssl_ports[node_id - 1]}"
        settings["listeners"] = f"{settings['listeners']},{sasl_ssl},{mtls}"
        settings["advertised.listeners"] = f"{settings['advertised.listeners']},{sasl_ssl},{mtls}"
        settings["listener.security.protocol.map"] = (
            f"{settings['listener.security.protocol.map']},SASL_SSL:SASL_SSL,SSL:SSL"
        )
        settings |= _secure_settings(security_files, sasl_password)
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _secure_settings(files: SecurityFiles, sasl_password: str) -> dict[str, str]:
    """TLS for both secure listeners, SASL for SASL_SSL, a client certificate for SSL.

    Inter-broker and controller traffic stay on the PLAINTEXT listeners (loopback only),
    so no broker needs credentials of its own. The key store is Kafka's PEM type: one
    file with the unencrypted PKCS#8 key and the chain, which Kafka 4 reads without any
    ``ssl.key.password``, so no key password sits in this file. No authorizer runs: an
    authenticated client may do anything, as on the PLAINTEXT listener.
    """
    scram_module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain_module = "org.apache.kafka.common.security.plain.PlainLoginModule"
    settings = {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(files.broker_keystore_file),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(files.ca_file),
        # For the mTLS listener only: SASL_SSL clients authenticate with a password.
        "listener.name.ssl.ssl.client.auth": "required",
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
    }
    # SCRAM checks against the credentials written at format time (``--add-scram``);
    # PLAIN has no store of its own, so its one user is listed in its JAAS config.
    for mechanism in SCRAM_MECHANISMS:
        key = f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"
        settings[key] = f"{scram_module} required;"
    settings["listener.name.sasl_ssl.plain.sasl.jaas.config"] = (
        f'{plain_module} required user_{SASL_USERNAME}="{sasl_password}";'
    )
    return settings


def log4j2_config(log_file: Path) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="{log_file}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="org.apache.kafka.controller" level="warn"/>
    <Logger name="state.change.logger" level="warn"/>
  </Loggers>
</Configuration>
"""


TOOL_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders><Console name="stderr" target="SYSTEM_ERR">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="stderr"/></Root>
    <Logger name="org.apache.kafka.clients.NetworkClient" level="error"/></Loggers>
</Configuration>
"""


# --------------------------------------------------------------------------- processes


def _pid_is_node(pid: int, data_dir: Path) -> bool:
    """True while ``pid`` is a live broker of ``data_dir`` (not a reused pid, not a zombie)."""
    process = procctl.live_process(pid)
    if process is None:
        return False
    if process.args == [""]:  # just exec'ed: the kernel has not filled in the arguments yet
        return "(java)" in process.stat
    inside = str(data_dir) + os.sep  # so that .../run1 is not mistaken for .../run10
    return BROKER_MAIN in process.args and any(arg.startswith(inside) for arg in process.args)


def _read_state(data_dir: Path) -> KafkaCluster | None:
    raw = procctl.read_json(data_dir / STATE_FILE)
    if raw is None:
        return None
    nodes = tuple(KafkaNode(**node) for node in raw["nodes"])
    return KafkaCluster(
        version=raw["version"],
        data_dir=raw["data_dir"],
        nodes=nodes,
        security=raw.get("security", "plaintext"),  # state files from before security
    )


def _write_state(cluster: KafkaCluster) -> None:
    procctl.write_json(Path(cluster.data_dir) / STATE_FILE, asdict(cluster))


def _record_pid(data_dir: Path, node_id: int, pid: int) -> KafkaCluster:
    """Rewrite the state file with ``node_id``'s new pid; the other nodes stay as recorded."""
    # Two nodes may be started at once (from two threads or shells): read-modify-write
    # under a lock, so neither loses the other's pid.
    with _locked(data_dir / STATE_LOCK):
        cluster = _read_state(data_dir)
        if cluster is None:
            raise KafkactlError(
                f"the state file in {data_dir} vanished while node {node_id} started"
            )
        nodes = tuple(
            replace(node, pid=pid) if node.node_id == node_id else node for node in cluster.nodes
        )
        cluster = replace(cluster, nodes=nodes)
        _write_state(cluster)
    return cluster


def stable_free_ports(count: int, *, lowest: int = 20000) -> list[int]:
    """``count`` distinct free ports below the kernel's ephemeral range, ascending.

    A port the kernel picked (``free_port``) is an ephemeral port, which any outgoing
    connection may take as its source port while the node that owns it is down; then
    the node cannot come back on it. Ports below the ephemeral range are only ever taken
    by a process that binds them on purpose.
    """
    try:
        return procctl.stable_free_ports(count, lowest=lowest)
    except procctl.NoFreePorts as exc:
        raise KafkactlError(str(exc)) from None


def recorded(data_dir: Path = DEFAULT_DATA_DIR) -> KafkaCluster | None:
    """The cluster the state file of ``data_dir`` records, whether its nodes are up or not.

    Its ``pid`` fields are the last known ones; ``live_nodes`` says which still run.
    None when no cluster was started from ``data_dir`` (or ``stop`` cleared it).
    """
    return _read_state(Path(data_dir).resolve())


def live_nodes(data_dir: Path = DEFAULT_DATA_DIR) -> tuple[KafkaNode, ...]:
    """The recorded nodes of ``data_dir`` whose broker process is running right now."""
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        return ()
    return tuple(node for node in cluster.nodes if _pid_is_node(node.pid, data_dir))


def status(data_dir: Path = DEFAULT_DATA_DIR) -> KafkaCluster | None:
    """The cluster running from ``data_dir``, or None when any of its nodes is down."""
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        return None
    if all(_pid_is_node(node.pid, data_dir) for node in cluster.nodes):
        return cluster
    return None


def _wait_until_gone(pids: Sequence[int], data_dir: Path) -> None:
    """Return once every pid has exited and released its ports (a restart binds them)."""
    for pid in pids:
        while _pid_is_node(pid, data_dir) or procctl.still_exiting(pid):
            time.sleep(0.02)


def stop(data_dir: Path = DEFAULT_DATA_DIR, *, grace: float = STOP_GRACE_SECONDS) -> bool:
    """SIGTERM every node, SIGKILL what is left after ``grace`` s. True if any was running.

    Forgets the cluster (removes the state file); its data and cluster id stay, so
    ``start`` with the same ports and data dir brings it back with its topics and offsets.
    """
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        return False
    majority = len(cluster.nodes) // 2 + 1

    def quorum_lost(alive: Sequence[int]) -> float | None:
        # Once a majority of the controller quorum is gone, the nodes left wait for a
        # controller to acknowledge their shutdown that can never come; don't wait long.
        if len(cluster.nodes) > 1 and len(alive) < majority:
            return QUORUM_LOST_GRACE_SECONDS
        return None

    # Signal all nodes at once: stopped one by one, the last ones lose their quorum and
    # wait for a controller that never comes back.
    signalled = procctl.stop_groups(
        [node.pid for node in cluster.nodes],
        lambda pid: _pid_is_node(pid, data_dir),
        grace=grace,
        cut_short=quorum_lost,
    )
    _wait_until_gone(signalled, data_dir)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return bool(signalled)


def stop_node(
    data_dir: Path,
    node_id: int,
    *,
    hard: bool = False,
    grace: float = STOP_GRACE_SECONDS,
) -> bool:
    """Take one node down and keep it recorded, so ``start_node`` can bring it back.

    ``hard`` SIGKILLs it (a crash: no controlled shutdown, its leaderships move only
    once the controller fences it); otherwise SIGTERM, and SIGKILL after ``grace`` s.
    Returns once the process is gone; True if it was running.
    """
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        raise KafkactlError(f"no cluster recorded in {data_dir}; start one with `kafkactl start`")
    node = cluster.node(node_id)
    if not _pid_is_node(node.pid, data_dir):
        return False
    procctl.stop_group(
        node.pid, lambda: _pid_is_node(node.pid, data_dir), grace=grace, hard=hard, poll=0.05
    )
    _wait_until_gone([node.pid], data_dir)
    return True


def start_node(
    data_dir: Path,
    node_id: int,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    heap: str = "512m",
) -> KafkaCluster:
    """Start a stopped node of a recorded cluster again, on its ports and its data.

    Returns once the node answers on its client port and every other live node lists it
    as a registered (unfenced) broker, with the state file holding its new pid. A node
    that is already up is left alone.
    """
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        raise KafkactlError(f"no cluster recorded in {data_dir}; start one with `kafkactl start`")
    node = cluster.node(node_id)
    if _pid_is_node(node.pid, data_dir):
        return cluster
    others_up = sum(
        1 for n in cluster.nodes if n.node_id != node_id and _pid_is_node(n.pid, data_dir)
    )
    majority = len(cluster.nodes) // 2 + 1
    if others_up + 1 < majority:
        raise KafkactlError(
            f"node {node_id} cannot serve: {others_up} other node(s) of {len(cluster.nodes)} "
            f"are up and the controller quorum needs {majority}; restart the whole cluster "
            "with `kafkactl stop` and `kafkactl start` on the same ports"
        )
    node_dir = data_dir / f"node-{node_id}"
    if not (node_dir / "data" / "meta.properties").exists():
        raise KafkactlError(
            f"{node_dir / 'data'} is not formatted; was node {node_id} ever started?"
        )
    # A node killed from elsewhere (kill -9) may hold its ports for a moment longer.
    ports = _node_ports(node)
    if not procctl.wait_for(
        lambda: not any(procctl.port_in_use(p) for p in ports),
        timeout=PORT_RELEASE_SECONDS,
        interval=0.05,
    ) and (taken := [p for p in ports if procctl.port_in_use(p)]):
        raise KafkactlError(
            f"port {taken[0]} of node {node_id} is in use by another process; "
            "free it, or restart the cluster on other ports"
        )
    pid = _launch_node(require_java(), fetch(cluster.version, quiet=True), node_dir, heap)
    cluster = _record_pid(data_dir, node_id, pid)
    node = cluster.node(node_id)
    try:
        _wait_until_node_serves(cluster, node, timeout)
    except BaseException:
        stop_node(data_dir, node_id, hard=True)
        raise
    return cluster


def _node_ports(node: KafkaNode) -> list[int]:
    """Every port ``node`` listens on (0 stands for a listener it does not have)."""
    ports = (node.port, node.controller_port, node.sasl_ssl_port, node.ssl_port)
    return [port for port in ports if port]


def start(
    *,
    nodes: int = 1,
    port: int = DEFAULT_PORT,
    controller_port: int | None = None,
    ports: Sequence[int] | None = None,
    controller_ports: Sequence[int] | None = None,
    data_dir: Path = DEFAULT_DATA_DIR,
    timeout: float = DEFAULT_START_TIMEOUT,
    heap: str = "512m",
    security: Security = "plaintext",
    sasl_ssl_ports: Sequence[int] | None = None,
    ssl_ports: Sequence[int] | None = None,
) -> KafkaCluster:
    """Start ``nodes`` KRaft nodes (or reuse them if running) and wait until they serve.

    ``ports``/``controller_ports`` give every node's ports explicitly (the pytest fixture
    picks free ones); otherwise they count up from ``port`` and ``controller_port``.
    A data dir that held a cluster before keeps its cluster id and data: started on the
    same ports again, the cluster has its topics and committed offsets back. Any node
    still running from a partly stopped cluster is stopped first.

    ``security="sasl_ssl"`` adds the SASL_SSL and mTLS listeners (module docstring) on
    ``sasl_ssl_ports``/``ssl_ports``, by default ``port + 200 + i`` and ``port + 300 + i``,
    and returns once both answer a TLS handshake too. A data dir keeps the security it
    was first formatted with.
    """
    if nodes not in (1, 3):
        raise KafkactlError(f"--nodes must be 1 or 3, got {nodes}")
    if security not in SECURITY_MODES:
        raise KafkactlError(
            f"--security must be one of {', '.join(SECURITY_MODES)}, got {security!r}"
        )
    data_dir = Path(data_dir).resolve()
    running = status(data_dir)
    if running is not None:
        if running.security != security:
            raise KafkactlError(
                f"a {running.security} cluster already runs from {data_dir}; "
                f"stop it first (`kafkactl stop`) or start with --security {running.security}"
            )
        return running
    stop(data_dir)  # a half-dead cluster from before: clear it out

    if controller_port is None:
        controller_port = port + CONTROLLER_PORT_OFFSET
    ports = list(ports) if ports else [port + i for i in range(nodes)]
    controller_ports = (
        list(controller_ports) if controller_ports else [controller_port + i for i in range(nodes)]
    )
    if len(ports) != nodes or len(controller_ports) != nodes:
        raise KafkactlError(f"need {nodes} client ports and {nodes} controller ports")
    if security == "plaintext":
        sasl_ssl_ports, ssl_ports = [], []
    else:
        sasl_ssl_ports, ssl_ports = _secure_ports(nodes, port, sasl_ssl_ports, ssl_ports)
    for candidate in [*ports, *controller_ports, *sasl_ssl_ports, *ssl_ports]:
        if procctl.port_in_use(candidate):
            raise KafkactlError(
                f"port {candidate} is already in use by another process; "
                "stop it or pick other ports with --port"
            )

    # Before any JVM: a data dir of the other security fails here, with what to do.
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster_id = _cluster_id_for(data_dir, nodes, security)
    node_dirs = [data_dir / f"node-{node_id}" for node_id in range(1, nodes + 1)]
    # A restart finds its dirs formatted; skipping them saves a JVM start per node.
    unformatted = [d for d in node_dirs if not (d / "data" / "meta.properties").exists()]
    files: SecurityFiles | None = None
    sasl_password: str | None = None
    if security == "sasl_ssl":
        files = SecurityFiles(data_dir / SECURITY_DIR)
        _certs_module().ensure_local_pki(files)
        sasl_password = _sasl_password(files, formatted=len(unformatted) < nodes)

    java = require_java()
    version = kafka_version()
    libs = fetch(version)

    for node_id, node_dir in enumerate(node_dirs, start=1):
        node_dir.mkdir(exist_ok=True)
        properties = server_properties(
            node_id=node_id,
            ports=ports,
            controller_ports=controller_ports,
            log_dir=node_dir / "data",
            security=security,
            sasl_ssl_ports=sasl_ssl_ports,
            ssl_ports=ssl_ports,
            security_files=files,
            sasl_password=sasl_password,
        )
        if sasl_password is None:
            (node_dir / "server.properties").write_text(properties)
        else:
            _write_secret(node_dir / "server.properties", properties)  # PLAIN's JAAS password
        (node_dir / "log4j2.xml").write_text(log4j2_config(node_dir / "server.log"))

    scram = None if sasl_password is None else (SASL_USERNAME, sasl_password)
    _format_storage(java, libs, cluster_id, unformatted, scram=scram)

    started = [
        KafkaNode(
            node_id=node_id,
            port=ports[node_id - 1],
            controller_port=controller_ports[node_id - 1],
            pid=_launch_node(java, libs, node_dir, heap),
            log=str(node_dir / "server.log"),
            sasl_ssl_port=sasl_ssl_ports[node_id - 1] if sasl_ssl_ports else 0,
            ssl_port=ssl_ports[node_id - 1] if ssl_ports else 0,
        )
        for node_id, node_dir in enumerate(node_dirs, start=1)
    ]
    cluster = KafkaCluster(
        version=version, data_dir=str(data_dir), nodes=tuple(started), security=security
    )
    _write_state(cluster)  # before waiting, so `stop` can clean up whatever happens next

    try:
        _wait_until_serving(cluster, timeout)
    except BaseException:
        stop(data_dir, grace=5)
        raise
    return cluster


def _secure_ports(
    nodes: int, port: int, sasl_ssl_ports: Sequence[int] | None, ssl_ports: Sequence[int] | None
) -> tuple[list[int], list[int]]:
    """The SASL_SSL and SSL ports of every node: as given, else ``port + 200/300 + i``."""
    sasl_ssl = list(sasl_ssl_ports or [port + SASL_SSL_PORT_OFFSET + i for i in range(nodes)])
    mtls = list(ssl_ports or [port + SSL_PORT_OFFSET + i for i in range(nodes)])
    if len(sasl_ssl) != nodes or len(mtls) != nodes:
        raise KafkactlError(f"need {nodes} SASL_SSL ports and {nodes} SSL ports")
    if out_of_range := [p for p in (*sasl_ssl, *mtls) if not 0 < p < 65536]:
        raise KafkactlError(
            f"port {out_of_range[0]} is out of range; pick a lower --port "
            f"(SASL_SSL and SSL listen on --port + {SASL_SSL_PORT_OFFSET} and "
            f"+ {SSL_PORT_OFFSET})"
        )
    return sasl_ssl, mtls


def _certs_module() -> ModuleType:
    """``certs.py`` beside this file, imported only when security is asked for.

    It needs ``cryptography``, which only the uv environment has: the plaintext broker
    must keep starting from a bare ``python3``.
    """
    try:
        import certs
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("cryptography"):
            raise
        raise KafkactlError(
            "--security sasl_ssl makes certificates with the `cryptography` package, which "
            "this Python lacks; run kafkactl under `uv run` "
            "(uv run deploy/kafka/kafkactl start --security sasl_ssl)"
        ) from exc
    return certs


def _write_secret(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only (also when it existed with wider modes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def _sasl_password(files: SecurityFiles, *, formatted: bool) -> str:
    """The SASL password of the data dir: made once, then read back on every restart.

    The SCRAM credentials are written only when a node's storage is formatted, and a
    restart skips formatting, so a new password would lock every client out.
    """
    try:
        return files.password_file.read_text()
    except FileNotFoundError:
        if formatted:
            raise KafkactlError(
                f"{files.password_file} is gone, but the nodes were formatted with its "
                "password; restore it, or delete the data dir to start afresh"
            ) from None
    password = secrets.token_urlsafe(24)
    _write_secret(files.password_file, password)
    return password


def _launch_node(java: str, libs: Path, node_dir: Path, heap: str) -> int:
    """Start the broker of ``node_dir`` (configured and formatted) in its own session."""
    process = procctl.spawn(
        [
            java,
            "-Xms256m",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node_dir / 'log4j2.xml'}",
            "-cp",
            classpath(libs),
            BROKER_MAIN,
            str(node_dir / "server.properties"),
        ],
        node_dir / "server.log",
        cwd=node_dir,
    )
    return process.pid


def _cluster_id_for(data_dir: Path, nodes: int, security: Security = "plaintext") -> str:
    """The data dir's cluster id, made once: a restart must format with the same id.

    The node count and the security are recorded beside it: a restart with other ones
    would meet storage formatted for the first (no SCRAM users, or a missing node).
    """
    path = data_dir / "cluster.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {"cluster_id": new_cluster_id(), "nodes": nodes, "security": security}
        path.write_text(json.dumps(known) + "\n")
    if known["nodes"] != nodes:
        raise KafkactlError(
            f"{data_dir} holds a {known['nodes']}-node cluster, not {nodes}; "
            "pass another --data-dir or delete that one"
        )
    formatted_with = known.get("security", "plaintext")  # cluster.json from before security
    if formatted_with != security:
        raise KafkactlError(
            f"{data_dir} holds a cluster made with --security {formatted_with}, not {security}; "
            f"start it with --security {formatted_with}, or pass another --data-dir"
        )
    return str(known["cluster_id"])


def _format_storage(
    java: str,
    libs: Path,
    cluster_id: str,
    node_dirs: Sequence[Path],
    *,
    scram: tuple[str, str] | None = None,
) -> None:
    """Format the nodes' storage, with ``scram`` = (user, password) as SCRAM credentials.

    KRaft takes SCRAM users at format time (``--add-scram``): they are in the metadata
    log from the first moment, so no client ever races a user being created.
    """
    add_scram = []
    if scram is not None:
        user, password = scram
        for mechanism in SCRAM_MECHANISMS:
            add_scram += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    # One JVM per node, in parallel: the format is most of a cold start's cost.
    formats = [
        subprocess.Popen(
            [
                java,
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={node_dir / 'log4j2.xml'}",
                "-cp",
                classpath(libs),
                "kafka.tools.StorageTool",
                "format",
                "-g",
                "-t",
                cluster_id,
                "-c",
                str(node_dir / "server.properties"),
                *add_scram,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node_dir in node_dirs
    ]
    for node_dir, process in zip(node_dirs, formats, strict=True):
        output, _ = process.communicate()
        if process.returncode != 0:
            last = (output.strip().splitlines() or ["no output"])[-1]
            if scram is not None:  # it may quote the --add-scram argument
                last = last.replace(scram[1], "<password>")
            raise KafkactlError(f"formatting {node_dir} failed: {last}")


def _wait_until_serving(cluster: KafkaCluster, timeout: float) -> None:
    data_dir = Path(cluster.data_dir)
    deadline = time.monotonic() + timeout
    want = {node.node_id for node in cluster.nodes}
    contexts = _tls_contexts(cluster)
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if not _pid_is_node(node.pid, data_dir):
                raise KafkactlError(
                    f"Kafka node {node.node_id} exited during startup; log tail:\n"
                    + _log_tail(Path(node.log))
                )
        try:
            registered = {
                broker_id
                for node in cluster.nodes
                for broker_id in probe_brokers(HOST, node.port, timeout=1.0)
            }
        except OSError as exc:
            last_error = str(exc) or type(exc).__name__
        else:
            if want <= registered:
                problem = _secure_listener_problem(cluster.nodes, contexts)
                if problem is None:
                    return
                last_error = problem
            else:
                last_error = f"brokers registered: {sorted(registered)}, want {sorted(want)}"
        time.sleep(0.2)
    logs = "\n".join(f"--- node {n.node_id}:\n{_log_tail(Path(n.log))}" for n in cluster.nodes)
    raise KafkactlError(
        f"Kafka at {cluster.bootstrap} not ready after {timeout:.0f} s ({last_error}); "
        f"log tail:\n{logs}"
    )


def _wait_until_node_serves(cluster: KafkaCluster, node: KafkaNode, timeout: float) -> None:
    """Wait until ``node`` and every other live node list ``node`` among their brokers.

    A broker's Metadata answer lists the unfenced brokers only, so this is the moment
    the controller took the node back and clients can reach its partitions again.
    """
    data_dir = Path(cluster.data_dir)
    deadline = time.monotonic() + timeout
    contexts = _tls_contexts(cluster)
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if not _pid_is_node(node.pid, data_dir):
            raise KafkactlError(
                f"Kafka node {node.node_id} exited during startup; log tail:\n"
                + _log_tail(Path(node.log))
            )
        witnesses = [node] + [
            other
            for other in cluster.nodes
            if other.node_id != node.node_id and _pid_is_node(other.pid, data_dir)
        ]
        try:
            unaware = [
                witness.node_id
                for witness in witnesses
                if node.node_id not in probe_brokers(HOST, witness.port, timeout=1.0)
            ]
        except OSError as exc:
            last_error = str(exc) or type(exc).__name__
        else:
            if not unaware:
                problem = _secure_listener_problem([node], contexts)
                if problem is None:
                    return
                last_error = problem
            else:
                last_error = f"node {node.node_id} not yet registered as seen by node(s) {unaware}"
        time.sleep(0.1)
    raise KafkactlError(
        f"Kafka node {node.node_id} at {node.address} not serving after {timeout:.0f} s "
        f"({last_error}); log tail:\n{_log_tail(Path(node.log))}"
    )


def _tls_contexts(cluster: KafkaCluster) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """Client contexts for the SASL_SSL and the mTLS listener (None: plaintext cluster).

    Both verify the broker against the cluster's CA and host name, as a client would;
    the second presents the cluster's client certificate.
    """
    if cluster.security_dir is None:
        return None
    files = SecurityFiles(cluster.security_dir)
    server_only = ssl.create_default_context(cafile=files.ca_file)
    mutual = ssl.create_default_context(cafile=files.ca_file)
    mutual.load_cert_chain(
        files.client_certfile,
        files.client_keyfile,
        password=files.client_key_password_file.read_text(),
    )
    return server_only, mutual


def _secure_listener_problem(
    nodes: Sequence[KafkaNode], contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None
) -> str | None:
    """None once each node's SASL_SSL and SSL listener completes a TLS handshake.

    A broker that answers on PLAINTEXT has opened its other listeners too, but a key
    store Kafka cannot use shows only here; so `start` proves the listeners it reports.
    """
    if contexts is None:
        return None
    server_only, mutual = contexts
    for node in nodes:
        for port, context in ((node.sasl_ssl_port, server_only), (node.ssl_port, mutual)):
            try:
                with (
                    socket.create_connection((HOST, port), timeout=1.0) as raw,
                    context.wrap_socket(raw, server_hostname=HOST),
                ):
                    pass
            except OSError as exc:  # ssl.SSLError too
                return f"no TLS handshake with node {node.node_id} on port {port}: {exc}"
    return None


def _log_tail(log: Path, lines: int = 25) -> str:
    return procctl.tail(log, lines)


# --------------------------------------------------------------------------- probe

API_METADATA = 3
API_VERSIONS = 18
# Kafka 4 dropped Metadata v0-v3 (KIP-896); v4-v8 share the non-flexible layout parsed here.
METADATA_VERSIONS = range(4, 9)


def _request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request (header v1) and return the response body after the correlation id."""
    client_id = b"kafkactl"
    correlation_id = 1
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
    response = _recv_exactly(sock, size)
    (got_correlation_id,) = struct.unpack_from(">i", response)
    if got_correlation_id != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_correlation_id}")
    return response[4:]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def parse_api_versions(body: bytes) -> dict[int, tuple[int, int]]:
    """ApiVersions v0 response: error code, then [api_key, min_version, max_version]."""
    error_code, count = struct.unpack_from(">hi", body)
    if error_code != 0:
        raise ConnectionError(f"ApiVersions error code {error_code}")
    entries = struct.iter_unpack(">hhh", body[6 : 6 + 6 * count])
    return {key: (low, high) for key, low, high in entries}


def parse_metadata_brokers(body: bytes) -> list[int]:
    """Broker ids from a Metadata v4-v8 response (throttle time, then the brokers array)."""
    offset = 4
    (count,) = struct.unpack_from(">i", body, offset)
    offset += 4
    broker_ids = []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", body, offset)
        offset += 6 + host_len + 4  # host, port
        (rack_len,) = struct.unpack_from(">h", body, offset)
        offset += 2 + max(rack_len, 0)
        broker_ids.append(node_id)
    return broker_ids


def probe_brokers(host: str, port: int, *, timeout: float = 1.0) -> list[int]:
    """Ids of the brokers that ``host:port`` knows, by ApiVersions then Metadata requests."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        versions = parse_api_versions(_request(sock, API_VERSIONS, 0, b""))
        low, high = versions.get(API_METADATA, (0, -1))
        usable = [v for v in METADATA_VERSIONS if low <= v <= high]
        if not usable:
            raise ConnectionError(f"broker offers Metadata v{low}-v{high}, kafkactl needs v4-v8")
        # No topics (an empty array, not null = all), and never auto-create.
        body = struct.pack(">ib", 0, 0)
        return parse_metadata_brokers(_request(sock, API_METADATA, usable[0], body))


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class DeclaredTopic:
    """One of the pipeline's topics as ``topology.toml`` declares it."""

    role: str
    name: str
    configs: dict[str, str]
    minimums: dict[str, str]


@dataclass(frozen=True)
class Topology:
    """The pipeline's topics and a deployment's default partitions and replication."""

    partitions: int
    replication_factor: int
    topics: tuple[DeclaredTopic, ...]

    def topic(self, name: str) -> DeclaredTopic | None:
        """The declared topic called ``name`` (its Kafka name, e.g. ``sensor-data``)."""
        return next((topic for topic in self.topics if topic.name == name), None)


def load_topology(path: Path = TOPOLOGY_FILE) -> Topology:
    """Read the topic declaration (stdlib ``tomllib``: kafkactl runs before ``uv sync``)."""
    try:
        raw = tomllib.loads(path.read_text())
        defaults = raw["defaults"]
        topics = tuple(
            DeclaredTopic(
                role=role,
                name=str(spec["name"]),
                configs={str(k): str(v) for k, v in spec.get("configs", {}).items()},
                minimums={str(k): str(v) for k, v in spec.get("minimums", {}).items()},
            )
            for role, spec in raw["topics"].items()
        )
        return Topology(
            partitions=int(defaults["partitions"]),
            replication_factor=int(defaults["replication_factor"]),
            topics=topics,
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KafkactlError(f"cannot read the topic declaration {path}: {exc!r}") from exc


def min_insync_replicas(replication_factor: int) -> int:
    """Two acks from three replicas up, so one broker may fail; else every replica."""
    return 2 if replication_factor >= 3 else 1


def _config_setting(text: str) -> str:
    """argparse type of ``--config``: ``key=value`` with a non-empty key."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--config wants KEY=VALUE, got {text!r}")
    return text


def topic_create_argv(
    name: str,
    *,
    bootstrap: str,
    partitions: int | None = None,
    replication_factor: int | None = None,
    configs: Sequence[str] = (),
    topology: Topology | None = None,
    if_not_exists: bool = False,
) -> list[str]:
    """TopicCommand's arguments that create ``name`` (``configs`` are ``key=value``).

    For a topic of ``topology``, partitions and replication factor default to its
    ``[defaults]`` and the topic's ``configs`` and ``minimums`` are set, with
    ``min.insync.replicas`` to match the replication factor; ``configs`` given here win
    per key. Any other topic needs ``partitions`` and gets replication factor 1.
    """
    declared = topology.topic(name) if topology is not None else None
    settings: dict[str, str] = {}
    if topology is not None and declared is not None:
        partitions = topology.partitions if partitions is None else partitions
        if replication_factor is None:
            replication_factor = topology.replication_factor
        settings |= declared.configs | declared.minimums
        settings["min.insync.replicas"] = str(min_insync_replicas(replication_factor))
    elif partitions is None:
        known = ", ".join(topic.name for topic in topology.topics) if topology else "none"
        raise KafkactlError(
            f"--partitions is required for {name}: it is not a declared topic (declared: {known})"
        )
    replication_factor = 1 if replication_factor is None else replication_factor
    for setting in configs:
        key, _, value = _config_setting(setting).partition("=")
        settings[key.strip()] = value
    argv = ["--bootstrap-server", bootstrap, "--create", "--topic", name]
    argv += ["--partitions", str(partitions), "--replication-factor", str(replication_factor)]
    for key, value in settings.items():
        argv += ["--config", f"{key}={value}"]
    if if_not_exists:
        argv.append("--if-not-exists")
    return argv


# --------------------------------------------------------------------------- java tools


def java_tool_command(tool: str, args: Sequence[str]) -> list[str]:
    """The command line that runs a Kafka CLI class (e.g. ``...tools.TopicCommand``)."""
    java = require_java()
    libs = fetch(quiet=True)
    tool_log4j = libs.parent / "tools-log4j2.xml"
    if not tool_log4j.exists() or tool_log4j.read_text() != TOOL_LOG4J2:
        tool_log4j.write_text(TOOL_LOG4J2)
    return [
        java,
        "-Xmx256m",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={tool_log4j}",
        "-cp",
        classpath(libs),
        tool,
        *args,
    ]


def _bootstrap_for(args: argparse.Namespace) -> str:
    if args.bootstrap_server:
        return str(args.bootstrap_server)
    # The nodes that are up: a cluster with one node stopped still serves.
    nodes = live_nodes(args.data_dir)
    if not nodes:
        raise KafkactlError(
            f"no Kafka running from {args.data_dir}; "
            "run `kafkactl start` or pass --bootstrap-server"
        )
    return ",".join(node.address for node in nodes)


def _run_topic_command(argv: Sequence[str]) -> int:
    command = java_tool_command("org.apache.kafka.tools.TopicCommand", argv)
    return subprocess.run(command, check=False).returncode


# --------------------------------------------------------------------------- CLI


def _cmd_fetch(args: argparse.Namespace) -> int:
    print(fetch())
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cluster = start(
        nodes=args.nodes,
        port=args.port,
        controller_port=args.controller_port,
        data_dir=args.data_dir,
        timeout=args.timeout,
        security=args.security,
    )
    took = time.monotonic() - started
    pids = " ".join(str(node.pid) for node in cluster.nodes)
    print(f"kafkactl: Kafka {cluster.version} up (pids {pids}) in {took:.1f} s", file=sys.stderr)
    for line in _security_lines(cluster):
        print(f"kafkactl: {line}", file=sys.stderr)
    print(cluster.bootstrap)
    return 0


def _security_lines(cluster: KafkaCluster) -> list[str]:
    """What a client of a secure cluster needs to know: addresses, user, where the files are."""
    if cluster.security_dir is None:
        return []
    files = SecurityFiles(cluster.security_dir)
    return [
        f"SASL_SSL {cluster.sasl_ssl_bootstrap} ({', '.join(SASL_MECHANISMS)}; "
        f"user {SASL_USERNAME}, password in {files.password_file.name})",
        f"SSL {cluster.ssl_bootstrap} (mTLS: client certificate {files.client_certfile.name}, "
        f"key {files.client_keyfile.name}, its password in {files.client_key_password_file.name})",
        f"security dir {cluster.security_dir} (CA {files.ca_file.name})",
    ]


def _cmd_stop(args: argparse.Namespace) -> int:
    if stop(args.data_dir):
        print("kafkactl: stopped", file=sys.stderr)
    else:
        print("kafkactl: not running", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = recorded(args.data_dir)
    up = {node.node_id for node in live_nodes(args.data_dir)}
    if cluster is None or not up:
        print(f"not running (data dir {Path(args.data_dir).resolve()})")
        return EXIT_NOT_RUNNING
    down = len(cluster.nodes) - len(up)
    state = "running" if not down else f"degraded ({down} of {len(cluster.nodes)} down)"
    print(f"{state}: Kafka {cluster.version}, {len(cluster.nodes)} node(s) from {cluster.data_dir}")
    for node in cluster.nodes:
        process = f"pid {node.pid}" if node.node_id in up else "DOWN"
        print(
            f"  node {node.node_id}: {node.address} "
            f"(controller {HOST}:{node.controller_port}) {process} log {node.log}"
        )
    for line in _security_lines(cluster):
        print(f"  {line}")
    print(cluster.bootstrap)
    # Scripts wait for "all up" (the meaning of `status()`): a degraded cluster is not.
    return 0 if not down else EXIT_NOT_RUNNING


def _cmd_logs(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    logs = sorted(data_dir.glob("node-*/server.log"))
    if args.node is not None:
        logs = [log for log in logs if log.parent.name == f"node-{args.node}"]
    if not logs:
        raise KafkactlError(f"no broker logs under {data_dir}")
    for log in logs:
        if len(logs) > 1:
            print(f"==> {log} <==")
        sys.stdout.write(log.read_text(errors="replace"))
    if args.follow:
        positions = {log: log.stat().st_size for log in logs}
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                for log in logs:
                    with log.open("rb") as handle:
                        handle.seek(positions[log])
                        chunk = handle.read()
                    positions[log] += len(chunk)
                    sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                time.sleep(0.5)
    return 0


def _cmd_topic(args: argparse.Namespace) -> int:
    if args.topic_command == "create":
        argv = topic_create_argv(
            args.name,
            bootstrap=_bootstrap_for(args),
            partitions=args.partitions,
            replication_factor=args.replication_factor,
            configs=args.config,
            topology=load_topology(),
        )
    else:
        argv = ["--bootstrap-server", _bootstrap_for(args), "--topic", args.name, "--describe"]
    return _run_topic_command(argv)


def _cmd_topics(args: argparse.Namespace) -> int:
    topology = load_topology()
    bootstrap = _bootstrap_for(args)
    argvs = {
        topic.name: topic_create_argv(
            topic.name,
            bootstrap=bootstrap,
            partitions=args.partitions,
            replication_factor=args.replication_factor,
            topology=topology,
            if_not_exists=True,
        )
        for topic in topology.topics
    }
    # One JVM per topic, all at once: a JVM start is most of each TopicCommand's time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(argvs) or 1) as pool:
        exit_codes = dict(zip(argvs, pool.map(_run_topic_command, argvs.values()), strict=True))
    failed = [name for name, exit_code in exit_codes.items() if exit_code != 0]
    if failed:
        print(f"kafkactl: could not create {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"kafkactl: topics {', '.join(argvs)} exist", file=sys.stderr)
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.node_command == "stop":
        was_running = stop_node(args.data_dir, args.node_id, hard=args.hard, grace=args.grace)
        how = "killed" if args.hard else "stopped"
        outcome = how if was_running else "was not running"
        print(f"kafkactl: node {args.node_id} {outcome}", file=sys.stderr)
        return 0
    cluster = start_node(args.data_dir, args.node_id, timeout=args.timeout)
    node = cluster.node(args.node_id)
    took = time.monotonic() - started
    print(
        f"kafkactl: node {node.node_id} up at {node.address} (pid {node.pid}) in {took:.1f} s",
        file=sys.stderr,
    )
    print(cluster.bootstrap)
    return 0


def _cmd_run_java_tool(args: argparse.Namespace) -> int:
    command = java_tool_command(args.tool_class, args.tool_args)
    os.execv(command[0], command)  # noqa: S606 -- hand over the terminal and the exit code


EXAMPLES = """examples:
  kafkactl start --nodes 3              three nodes on 9092-9094 (controllers 9192-9194)
  kafkactl node stop 2 --hard           crash node 2 (SIGKILL); `status` shows it DOWN
  kafkactl node start 2                 node 2 back on its ports and data, registered again
  kafkactl topics create --replication-factor 3
                                        every declared topic, min.insync.replicas=2
  kafkactl topic create sensor-data --partitions 12
  kafkactl stop && kafkactl start --nodes 3
                                        a restart: topics and committed offsets survive
  uv run deploy/kafka/kafkactl start --security sasl_ssl
                                        also SASL_SSL on 9292 and mTLS on 9392
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafkactl",
        description="Fetch and run a real Apache Kafka (KRaft) broker locally, without Docker.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where nodes keep config, data, logs and state (default {DEFAULT_DATA_DIR})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("fetch", help="resolve the broker jars with Maven (once per version)")

    start_cmd = commands.add_parser("start", parents=[data_dir], help="start (or reuse) a broker")
    start_cmd.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start_cmd.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="client port of node 1 (+1 per node)"
    )
    start_cmd.add_argument(
        "--controller-port", type=int, help="controller port of node 1 (default: --port + 100)"
    )
    start_cmd.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    start_cmd.add_argument(
        "--security",
        choices=SECURITY_MODES,
        default="plaintext",
        help="sasl_ssl adds, beside PLAINTEXT, a SASL_SSL listener (SCRAM-SHA-512/256, PLAIN; "
        f"on --port + {SASL_SSL_PORT_OFFSET}) and an mTLS SSL listener (on --port + "
        f"{SSL_PORT_OFFSET}), with a CA and certificates made in <data-dir>/{SECURITY_DIR}; "
        "needs `uv run` (cryptography). A data dir keeps the security it was made with. "
        "(default plaintext)",
    )

    commands.add_parser("stop", parents=[data_dir], help="stop the nodes (idempotent)")
    commands.add_parser("status", parents=[data_dir], help="exit 0 if running, 3 if not")

    logs = commands.add_parser("logs", parents=[data_dir], help="print the broker log(s)")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--node", type=int)

    node = commands.add_parser(
        "node",
        help="stop or start one node of a running cluster (chaos testing)",
        description="Take one node down and bring it back on the same ports and data. "
        "A stopped node stays recorded: `status` shows it DOWN (and exits 3) until "
        "`node start` brings it back.",
    )
    node_commands = node.add_subparsers(dest="node_command", required=True)
    node_stop = node_commands.add_parser(
        "stop", parents=[data_dir], help="SIGTERM one node (SIGKILL after --grace s)"
    )
    node_stop.add_argument("node_id", type=int, metavar="N", help="node id (1-based)")
    node_stop.add_argument(
        "--hard", action="store_true", help="SIGKILL at once: a crash, no controlled shutdown"
    )
    node_stop.add_argument(
        "--grace",
        type=float,
        default=STOP_GRACE_SECONDS,
        help=f"seconds to wait after SIGTERM before SIGKILL (default {STOP_GRACE_SECONDS:.0f})",
    )
    node_start = node_commands.add_parser(
        "start",
        parents=[data_dir],
        help="start a stopped node again; returns when the cluster has it back",
    )
    node_start.add_argument("node_id", type=int, metavar="N", help="node id (1-based)")
    node_start.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)

    declared_help = (
        f"A declared topic ({_declared_names()}) takes its partitions, replication factor "
        f"and configs from {TOPOLOGY_FILE.relative_to(REPO_ROOT)}; any other needs "
        "--partitions."
    )
    topic = commands.add_parser("topic", help="create or describe a topic (TopicCommand)")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True)
    for name in ("create", "describe"):
        sub = topic_commands.add_parser(
            name, parents=[data_dir], description=declared_help if name == "create" else None
        )
        sub.add_argument("name")
        sub.add_argument("--bootstrap-server", help="default: the running local broker")
        if name == "create":
            _add_topic_sizing(sub)
            sub.add_argument(
                "--config",
                action="append",
                default=[],
                type=_config_setting,
                metavar="KEY=VALUE",
                help="a topic config; wins over the declared one (repeatable)",
            )

    topics = commands.add_parser("topics", help="create all the pipeline's declared topics")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True)
    topics_create = topics_commands.add_parser(
        "create",
        parents=[data_dir],
        help="create every declared topic that does not exist yet",
        description=f"Create the topics declared in {TOPOLOGY_FILE.relative_to(REPO_ROOT)} "
        "(skipping those that exist), with their configs and min.insync.replicas to match "
        "the replication factor.",
    )
    topics_create.add_argument("--bootstrap-server", help="default: the running local broker")
    _add_topic_sizing(topics_create)

    tool = commands.add_parser(
        "run-java-tool",
        help="run a Kafka CLI class, e.g. org.apache.kafka.tools.ProducerPerformance",
    )
    tool.add_argument("tool_class")
    tool.add_argument("tool_args", nargs=argparse.REMAINDER)
    return parser


def _declared_names() -> str:
    try:
        return ", ".join(topic.name for topic in load_topology().topics)
    except KafkactlError:
        return "none readable"  # `-h` still works; `topic create` reports the error


def _add_topic_sizing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions", type=int, help="default: the declaration's (required for others)"
    )
    parser.add_argument("--replication-factor", type=int, help="default: the declaration's, else 1")


HANDLERS = {
    "fetch": _cmd_fetch,
    "start": _cmd_start,
    "stop": _cmd_stop,
    "status": _cmd_status,
    "logs": _cmd_logs,
    "node": _cmd_node,
    "topic": _cmd_topic,
    "topics": _cmd_topics,
    "run-java-tool": _cmd_run_java_tool,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except KafkactlError as exc:
        print(f"kafkactl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
