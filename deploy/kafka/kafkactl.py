"""Fetch and run a real Apache Kafka broker (KRaft) on this machine, without Docker.

The broker comes from Maven Central (``deploy/kafka/pom.xml`` pins the version) and runs
as plain ``java`` processes: one combined broker+controller node, or three on one host.
The same module backs the ``deploy/kafka/kafkactl`` CLI and the pytest fixtures.

Ports: node ``i`` (0-based) listens for clients on ``port + i`` and for the KRaft
controller quorum on ``controller_port + i`` (default ``port + 100``). So the default
single node is ``127.0.0.1:9092`` (controller 9192); three nodes are 9092-9094
(controllers 9192-9194).

Layout:
  .cache/kafka/<version>/libs/     jars resolved by Maven (``.complete`` marks success)
  <data-dir>/state.json            pids and ports of the running nodes
  <data-dir>/node-<id>/            server.properties, log4j2.xml, server.log, data/

This module uses the standard library only, so it runs before ``uv sync``. It must never
touch a process it did not start: ``stop`` only signals the pids in its own state file,
and only while their command line still names that data dir.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PORT",
    "KafkaCluster",
    "KafkaNode",
    "KafkactlError",
    "fetch",
    "kafka_version",
    "main",
    "start",
    "status",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).resolve().parent / "pom.xml"
CACHE_ROOT = REPO_ROOT / ".cache" / "kafka"
DEFAULT_DATA_DIR = CACHE_ROOT / "run"
DEFAULT_PORT = 9092
CONTROLLER_PORT_OFFSET = 100
DEFAULT_START_TIMEOUT = 60.0
STOP_GRACE_SECONDS = 20.0
QUORUM_LOST_GRACE_SECONDS = 2.0
MIN_JAVA = 17
HOST = "127.0.0.1"
STATE_FILE = "state.json"
BROKER_MAIN = "kafka.Kafka"
EXIT_NOT_RUNNING = 3


class KafkactlError(Exception):
    """A failure with a one-line message that says what to do about it."""


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    pid: int
    log: str

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class KafkaCluster:
    version: str
    data_dir: str
    nodes: tuple[KafkaNode, ...]

    @property
    def bootstrap(self) -> str:
        """Comma-joined client addresses, e.g. ``127.0.0.1:9092``."""
        return ",".join(node.address for node in self.nodes)


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
    *, node_id: int, ports: Sequence[int], controller_ports: Sequence[int], log_dir: Path
) -> str:
    """A combined broker+controller node of a ``len(ports)``-node KRaft cluster."""
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
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


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
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child (the pytest fixture)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    if cmdline == [b""]:  # just exec'ed: the kernel has not filled in the arguments yet
        return "(java)" in stat
    args = [arg.decode(errors="replace") for arg in cmdline]
    return BROKER_MAIN in args and any(arg.startswith(str(data_dir)) for arg in args)


def _read_state(data_dir: Path) -> KafkaCluster | None:
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    nodes = tuple(KafkaNode(**node) for node in raw["nodes"])
    return KafkaCluster(version=raw["version"], data_dir=raw["data_dir"], nodes=nodes)


def _write_state(cluster: KafkaCluster) -> None:
    path = Path(cluster.data_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2) + "\n")
    tmp.replace(path)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def status(data_dir: Path = DEFAULT_DATA_DIR) -> KafkaCluster | None:
    """The cluster running from ``data_dir``, or None when any of its nodes is down."""
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        return None
    if all(_pid_is_node(node.pid, data_dir) for node in cluster.nodes):
        return cluster
    return None


def stop(data_dir: Path = DEFAULT_DATA_DIR, *, grace: float = STOP_GRACE_SECONDS) -> bool:
    """SIGTERM every node, SIGKILL what is left after ``grace`` s. True if any was running."""
    data_dir = Path(data_dir).resolve()
    cluster = _read_state(data_dir)
    if cluster is None:
        return False
    alive = [node.pid for node in cluster.nodes if _pid_is_node(node.pid, data_dir)]
    was_running = bool(alive)
    # Signal all nodes at once: stopped one by one, the last ones lose their quorum and
    # wait for a controller that never comes back.
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # each node leads its own session
    deadline = time.monotonic() + grace
    # Once a majority of the controller quorum is gone, the nodes left wait for a
    # controller to acknowledge their shutdown that can never come; don't wait long.
    majority = len(cluster.nodes) // 2 + 1
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _pid_is_node(pid, data_dir)]
        if len(cluster.nodes) > 1 and len(alive) < majority:
            deadline = min(deadline, time.monotonic() + QUORUM_LOST_GRACE_SECONDS)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in alive:
        while _pid_is_node(pid, data_dir):
            time.sleep(0.05)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return was_running


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
) -> KafkaCluster:
    """Start ``nodes`` KRaft nodes (or reuse them if running) and wait until they serve.

    ``ports``/``controller_ports`` give every node's ports explicitly (the pytest fixture
    picks free ones); otherwise they count up from ``port`` and ``controller_port``.
    """
    if nodes not in (1, 3):
        raise KafkactlError(f"--nodes must be 1 or 3, got {nodes}")
    data_dir = Path(data_dir).resolve()
    running = status(data_dir)
    if running is not None:
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
    for candidate in [*ports, *controller_ports]:
        if _port_in_use(candidate):
            raise KafkactlError(
                f"port {candidate} is already in use by another process; "
                "stop it or pick other ports with --port"
            )

    java = require_java()
    version = kafka_version()
    libs = fetch(version)
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster_id = _cluster_id_for(data_dir, nodes)

    node_dirs = []
    for node_id in range(1, nodes + 1):
        node_dir = data_dir / f"node-{node_id}"
        node_dir.mkdir(exist_ok=True)
        properties = server_properties(
            node_id=node_id,
            ports=ports,
            controller_ports=controller_ports,
            log_dir=node_dir / "data",
        )
        (node_dir / "server.properties").write_text(properties)
        (node_dir / "log4j2.xml").write_text(log4j2_config(node_dir / "server.log"))
        node_dirs.append(node_dir)

    _format_storage(java, libs, cluster_id, node_dirs)

    started: list[KafkaNode] = []
    for node_id, node_dir in enumerate(node_dirs, start=1):
        log = node_dir / "server.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
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
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=node_dir,
            )
        started.append(
            KafkaNode(
                node_id=node_id,
                port=ports[node_id - 1],
                controller_port=controller_ports[node_id - 1],
                pid=process.pid,
                log=str(log),
            )
        )
    cluster = KafkaCluster(version=version, data_dir=str(data_dir), nodes=tuple(started))
    _write_state(cluster)  # before waiting, so `stop` can clean up whatever happens next

    try:
        _wait_until_serving(cluster, timeout)
    except BaseException:
        stop(data_dir, grace=5)
        raise
    return cluster


def _cluster_id_for(data_dir: Path, nodes: int) -> str:
    """The data dir's cluster id, made once: a restart must format with the same id."""
    path = data_dir / "cluster.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {"cluster_id": new_cluster_id(), "nodes": nodes}
        path.write_text(json.dumps(known) + "\n")
    if known["nodes"] != nodes:
        raise KafkactlError(
            f"{data_dir} holds a {known['nodes']}-node cluster, not {nodes}; "
            "pass another --data-dir or delete that one"
        )
    return str(known["cluster_id"])


def _format_storage(java: str, libs: Path, cluster_id: str, node_dirs: Sequence[Path]) -> None:
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
            raise KafkactlError(f"formatting {node_dir} failed: {last}")


def _wait_until_serving(cluster: KafkaCluster, timeout: float) -> None:
    data_dir = Path(cluster.data_dir)
    deadline = time.monotonic() + timeout
    want = {node.node_id for node in cluster.nodes}
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
                return
            last_error = f"brokers registered: {sorted(registered)}, want {sorted(want)}"
        time.sleep(0.2)
    logs = "\n".join(f"--- node {n.node_id}:\n{_log_tail(Path(n.log))}" for n in cluster.nodes)
    raise KafkactlError(
        f"Kafka at {cluster.bootstrap} not ready after {timeout:.0f} s ({last_error}); "
        f"log tail:\n{logs}"
    )


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log})"


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
    cluster = status(args.data_dir)
    if cluster is None:
        raise KafkactlError(
            f"no Kafka running from {args.data_dir}; "
            "run `kafkactl start` or pass --bootstrap-server"
        )
    return cluster.bootstrap


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
    )
    took = time.monotonic() - started
    pids = " ".join(str(node.pid) for node in cluster.nodes)
    print(f"kafkactl: Kafka {cluster.version} up (pids {pids}) in {took:.1f} s", file=sys.stderr)
    print(cluster.bootstrap)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    if stop(args.data_dir):
        print("kafkactl: stopped", file=sys.stderr)
    else:
        print("kafkactl: not running", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = status(args.data_dir)
    if cluster is None:
        print(f"not running (data dir {Path(args.data_dir).resolve()})")
        return EXIT_NOT_RUNNING
    print(f"running: Kafka {cluster.version}, {len(cluster.nodes)} node(s) from {cluster.data_dir}")
    for node in cluster.nodes:
        print(
            f"  node {node.node_id}: {node.address} "
            f"(controller {HOST}:{node.controller_port}) pid {node.pid} log {node.log}"
        )
    print(cluster.bootstrap)
    return 0


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
    command = ["--bootstrap-server", _bootstrap_for(args), "--topic", args.name]
    if args.topic_command == "create":
        command += ["--create", "--partitions", str(args.partitions)]
        command += ["--replication-factor", str(args.replication_factor)]
        for setting in args.config:
            command += ["--config", setting]
    else:
        command += ["--describe"]
    return subprocess.run(
        java_tool_command("org.apache.kafka.tools.TopicCommand", command), check=False
    ).returncode


def _cmd_run_java_tool(args: argparse.Namespace) -> int:
    command = java_tool_command(args.tool_class, args.tool_args)
    os.execv(command[0], command)  # noqa: S606 -- hand over the terminal and the exit code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafkactl",
        description="Fetch and run a real Apache Kafka (KRaft) broker locally, without Docker.",
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

    commands.add_parser("stop", parents=[data_dir], help="stop the nodes (idempotent)")
    commands.add_parser("status", parents=[data_dir], help="exit 0 if running, 3 if not")

    logs = commands.add_parser("logs", parents=[data_dir], help="print the broker log(s)")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--node", type=int)

    topic = commands.add_parser("topic", help="create or describe a topic (TopicCommand)")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True)
    for name in ("create", "describe"):
        sub = topic_commands.add_parser(name, parents=[data_dir])
        sub.add_argument("name")
        sub.add_argument("--bootstrap-server", help="default: the running local broker")
        if name == "create":
            sub.add_argument("--partitions", type=int, required=True)
            sub.add_argument("--replication-factor", type=int, default=1)
            sub.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")

    tool = commands.add_parser(
        "run-java-tool",
        help="run a Kafka CLI class, e.g. org.apache.kafka.tools.ProducerPerformance",
    )
    tool.add_argument("tool_class")
    tool.add_argument("tool_args", nargs=argparse.REMAINDER)
    return parser


HANDLERS = {
    "fetch": _cmd_fetch,
    "start": _cmd_start,
    "stop": _cmd_stop,
    "status": _cmd_status,
    "logs": _cmd_logs,
    "topic": _cmd_topic,
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
