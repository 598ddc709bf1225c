"""``make run``: the whole Sensorstream pipeline on this machine, without Docker.

Starts, in order: a real local Kafka (``deploy/kafka/kafkactl``, fresh data each run),
the pipeline's topics, Prometheus (Debian's package; the stack runs without it if it
cannot be installed) scraping every service and loading our alert rules, the producer,
N processors, one ``sensorstream-audit --follow``, and at the edges of the pipeline:
Mosquitto (``deploy/mqtt/mosquittoctl``) with the MQTT bridge and the device simulator
publishing to it (sensor ids ``device-0000`` .., so they never collide with the
producer's ``sensor-0000`` ..), and PostgreSQL (``deploy/postgres/pgctl``) with the sink
writing the aggregates and alerts into it. Mosquitto and PostgreSQL start while Kafka
does, with fresh data each run; either is left out (one line says so) when it is not
installed, or with ``--no-mqtt`` / ``--no-sink`` / ``--no-edges``. Each service has its
own metrics port. Then it shows a live terminal view (rich, ``stack_view.py``) built
from the services' ``/metrics``, or with ``--no-ui`` one summary line every few seconds.

Ctrl-C (or SIGTERM, or ``--duration``) stops everything: the services and Prometheus
each lead their own process group and get SIGTERM, then SIGKILL after a grace period
(``stack_processes.py``); then Mosquitto, PostgreSQL and Kafka are stopped through their
ctl modules. A second Ctrl-C skips the grace period.

The stack records what it started in ``<state-dir>/state.json`` (ports, pids, URLs, the
data dirs of Mosquitto and PostgreSQL; the integration test reads it). ``stack.py stop``
stops a stack whose terminal went away, touching only processes whose environment
carries this state dir's marker, and the servers of the data dirs it recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported (the tests), not run
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack_prereqs import (
    ensure_kafka_prerequisites,
    ensure_mosquitto,
    ensure_postgres,
    ensure_prometheus,
    missing_line,
    searchable_by,
)
from stack_processes import (
    HOST,
    MARKER_ENV,
    REPO,
    STOP_GRACE,
    Child,
    Stack,
    StackError,
    StopRequested,
    force_stop,
    forced,
    free_port,
    free_ports,
    kafkactl,
    mosquittoctl,
    pgctl,
    procctl,
    spawn,
    stop_children,
    tail,
    wait_http,
    wait_log,
)
from stack_view import (
    Reading,
    Sampler,
    by_label,
    parse_metrics,
    render,
    summary_line,
    total,
)

from sensorstream.schema import TOPOLOGY

__all__ = [
    "Child",
    "Reading",
    "Sampler",
    "Stack",
    "by_label",
    "devices_environment",
    "main",
    "parse_args",
    "parse_metrics",
    "postgres_location",
    "prometheus_config",
    "render",
    "summary_line",
    "total",
]

DEFAULT_STATE_DIR = REPO / ".cache" / "local-stack"
RULES_FILE = REPO / "deploy" / "prometheus" / "sensorstream.rules.yml"
TOPICS = tuple(spec.name for spec in TOPOLOGY)
PRODUCER_JOB = "sensorstream-producer"
PROCESSOR_JOB = "sensorstream-processor"
AUDIT_JOB = "sensorstream-audit"
BRIDGE_JOB = "sensorstream-bridge"
SINK_JOB = "sensorstream-sink"
DEVICES_SENSOR_PREFIX = "device-"  # the producer's sensors are sensor-0000 ..
START_ATTEMPTS = 3  # a free port taken by someone else meanwhile: pick another


# --------------------------------------------------------------------------- configuration


def prometheus_config(
    *,
    producers: Sequence[str],
    processors: Sequence[str],
    audits: Sequence[str],
    rules: Path,
    bridges: Sequence[str] = (),
    sinks: Sequence[str] = (),
    interval: str = "2s",
) -> str:
    """Prometheus config (JSON is YAML) scraping the local services under the compose job
    names; the bridge's and the sink's jobs only when they run."""
    jobs = [(PRODUCER_JOB, producers), (PROCESSOR_JOB, processors), (AUDIT_JOB, audits)]
    jobs += [
        (job, targets) for job, targets in ((BRIDGE_JOB, bridges), (SINK_JOB, sinks)) if targets
    ]
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def devices_environment(*, mqtt_port: int, rate: float, sensors: int) -> dict[str, str]:
    """The device simulator's settings: ``sensors`` sensors named ``device-0000`` .. (the
    producer's are ``sensor-0000`` ..: the audit must see one seq stream per sensor) at
    ``rate`` readings per second, until stopped."""
    return {
        "SENSORSTREAM_MQTT_HOST": HOST,
        "SENSORSTREAM_MQTT_PORT": str(mqtt_port),
        "SENSORSTREAM_SENSORS": str(sensors),
        "SENSORSTREAM_SENSOR_PREFIX": DEVICES_SENSOR_PREFIX,
        "SENSORSTREAM_RATE": str(rate),
        "SENSORSTREAM_INSTANCE_ID": "devices",
    }


def devices_can_avoid_collisions() -> bool:
    """True if the simulator takes a sensor id prefix (``--sensor-prefix``)."""
    from sensorstream.bridge.settings import DevicesSettings

    return "sensor_prefix" in DevicesSettings.model_fields


def postgres_location(state_dir: Path) -> tuple[Path, bool]:
    """Where PostgreSQL keeps its data, and whether that is a scratch dir of its own.

    ``<state-dir>/postgres`` when the server's user can reach it. Run as root the server
    runs as ``postgres``, which cannot enter e.g. ``/tmp/pytest-of-root`` (0700): then a
    new 0755 directory in ``/tmp``, removed when the stack stops.
    """
    wanted = state_dir / "postgres"
    if os.geteuid() != 0:
        return wanted, False
    try:
        user = pwd.getpwnam(pgctl.SERVER_USER_WHEN_ROOT)
    except KeyError:
        return wanted, False  # pgctl.start says what to install
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    if searchable_by(state_dir, user.pw_uid, gids):
        return wanted, False
    scratch = Path(tempfile.mkdtemp(prefix="sensorstream-stack-pg-"))
    scratch.chmod(0o755)
    return scratch / "pg", True


# --------------------------------------------------------------------------- kafka + topics


async def _create_topics(bootstrap: str, partitions: int) -> None:
    """The declared topology, created and checked the way every Sensorstream tool does."""
    from aiokafka.admin import AIOKafkaAdminClient

    from sensorstream.runtime import RetryPolicy, ensure_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await ensure_topics(
            admin,
            TOPOLOGY.configured(partitions=partitions),
            bootstrap=bootstrap,
            policy=RetryPolicy(budget=30.0),
        )
    finally:
        await admin.close()


def _start_kafka(stack: Stack, args: argparse.Namespace) -> None:
    # Fresh broker data every run: the view then starts at zero and no old lag lingers.
    kafkactl.stop(stack.kafka_dir, grace=10)
    shutil.rmtree(stack.kafka_dir, ignore_errors=True)
    port = free_port(args.kafka_port)
    controller_port = kafkactl.free_port()
    while controller_port == port:
        controller_port = kafkactl.free_port()
    print(f"stack: starting Kafka on {HOST}:{port} ...", flush=True)
    stack.kafka_started = True
    try:
        cluster = kafkactl.start(
            port=port, controller_port=controller_port, data_dir=stack.kafka_dir, timeout=90
        )
    except kafkactl.KafkactlError as exc:
        raise StackError(str(exc)) from exc
    stack.bootstrap = cluster.bootstrap
    asyncio.run(_create_topics(stack.bootstrap, args.partitions))
    print(f"stack: topics {', '.join(TOPICS)} ({args.partitions} partitions)", flush=True)


# --------------------------------------------------------------------------- mosquitto + postgres


def _start_mosquitto(data_dir: Path) -> mosquittoctl.MosquittoBroker:
    for attempt in range(START_ATTEMPTS):
        try:
            return mosquittoctl.start(data_dir, port=mosquittoctl.stable_free_port())
        except mosquittoctl.MosquittoctlError as exc:
            if attempt == START_ATTEMPTS - 1:
                raise StackError(f"Mosquitto did not start: {exc}") from exc
    raise AssertionError("unreachable")


def _start_postgres(data_dir: Path) -> pgctl.PostgresServer:
    for attempt in range(START_ATTEMPTS):
        try:
            return pgctl.start(data_dir, port=pgctl.stable_free_port())
        except pgctl.PgctlError as exc:
            if attempt == START_ATTEMPTS - 1:
                raise StackError(f"PostgreSQL did not start: {exc}") from exc
            shutil.rmtree(data_dir, ignore_errors=True)
    raise AssertionError("unreachable")


def _start_servers(stack: Stack) -> None:
    """Mosquitto and PostgreSQL (those the stack has dirs for), fresh; runs beside Kafka."""
    if stack.mosquitto_dir is not None:
        mosquittoctl.stop(stack.mosquitto_dir, hard=True)
        shutil.rmtree(stack.mosquitto_dir, ignore_errors=True)
        stack.mosquitto = _start_mosquitto(stack.mosquitto_dir)
    if stack.postgres_dir is not None:
        with contextlib.suppress(pgctl.PgctlError):
            pgctl.stop(stack.postgres_dir, mode="immediate")
        shutil.rmtree(stack.postgres_dir, ignore_errors=True)
        stack.postgres = _start_postgres(stack.postgres_dir)


def _stop_servers(stack: Stack) -> None:
    if stack.mosquitto_dir is not None:
        mosquittoctl.stop(stack.mosquitto_dir, grace=2 if forced() else 10)
    if stack.postgres_dir is not None:
        try:
            pgctl.stop(stack.postgres_dir, mode="immediate" if forced() else "fast")
        except pgctl.PgctlError as exc:
            print(f"stack: {exc}", file=sys.stderr, flush=True)
        if stack.postgres_scratch and pgctl.running(stack.postgres_dir) is None:
            shutil.rmtree(stack.postgres_dir.parent, ignore_errors=True)


def _postmaster_pid(server: pgctl.PostgresServer) -> int | None:
    try:
        return int((server.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- start / stop


def _write_state(stack: Stack, *, ready: bool) -> None:
    mosquitto: dict[str, Any] | None = None
    if stack.mosquitto_dir is not None:
        broker = stack.mosquitto
        mosquitto = {
            "data_dir": str(stack.mosquitto_dir),
            "address": broker and broker.address,
            "port": broker and broker.port,
            "pid": broker and broker.pid,
        }
    postgres: dict[str, Any] | None = None
    if stack.postgres_dir is not None:
        server = stack.postgres
        postgres = {
            "data_dir": str(stack.postgres_dir),
            "scratch": stack.postgres_scratch,
            "port": server and server.port,
            "database": server and server.database,
            "pid": server and _postmaster_pid(server),
        }
    state = {
        "ready": ready,
        "kafka": {"bootstrap": stack.bootstrap, "data_dir": str(stack.kafka_dir)},
        "prometheus": stack.prometheus_url,
        "mosquitto": mosquitto,
        "postgres": postgres,
        "services": [
            {
                "name": c.name,
                "role": c.role,
                "pid": c.pid,
                "port": c.port,
                "url": c.url,
                "log": str(c.log),
            }
            for c in stack.children
        ],
    }
    procctl.write_json(stack.state_dir / "state.json", state)


def _venv_command(script: str, module: str) -> list[str]:
    executable = Path(sys.executable).parent / script
    return [str(executable)] if executable.exists() else [sys.executable, "-m", module]


def _choose_edges(stack: Stack, args: argparse.Namespace) -> None:
    """Which of Mosquitto and PostgreSQL this run starts (sets their data dirs)."""
    if args.mqtt:
        if ensure_mosquitto(install=args.install):
            stack.mosquitto_dir = stack.state_dir / "mosquitto"
        else:
            print(
                missing_line("Mosquitto", "mosquitto", "the MQTT bridge", "--no-mqtt"), flush=True
            )
    if args.sink:
        if ensure_postgres(install=args.install):
            stack.postgres_dir, stack.postgres_scratch = postgres_location(stack.state_dir)
        else:
            print(missing_line("PostgreSQL", "postgresql", "the sink", "--no-sink"), flush=True)


def start_stack(stack: Stack, args: argparse.Namespace) -> None:
    ensure_kafka_prerequisites(install=args.install)
    prometheus = None if args.no_prometheus else ensure_prometheus(install=args.install)
    if prometheus is None and not args.no_prometheus:
        print(
            "stack: Prometheus is not installed and could not be installed; running without "
            "it. To add it: apt-get install -y --no-install-recommends prometheus, then make "
            "run again.",
            flush=True,
        )
    _choose_edges(stack, args)
    _write_state(stack, ready=False)  # `stack.py stop` finds the servers' dirs from here on

    # Mosquitto and PostgreSQL (initdb: seconds) come up while Kafka does.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        servers = pool.submit(_start_servers, stack)
        try:
            _start_kafka(stack, args)
        finally:
            # Also on Ctrl-C: a server half started must be up before it can be stopped.
            concurrent.futures.wait([servers])
        servers.result()
    if stack.mosquitto:
        print(f"stack: Mosquitto on {stack.mosquitto.address}", flush=True)
    if stack.postgres:
        print(f"stack: PostgreSQL on {HOST}:{stack.postgres.port}", flush=True)
    _write_state(stack, ready=False)

    base_env = {
        **os.environ,
        "SENSORSTREAM_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SENSORSTREAM_METRICS_HOST": HOST,
        "SENSORSTREAM_LOG_FORMAT": "json",
    }
    bridge_port = sink_port = None
    ports = free_ports(args.processors + 2 + bool(stack.mosquitto) + bool(stack.postgres))
    producer_port, *processor_ports, audit_port = ports[: args.processors + 2]
    extra = ports[args.processors + 2 :]
    if stack.mosquitto:
        bridge_port = extra.pop(0)
    if stack.postgres:
        sink_port = extra.pop(0)

    if prometheus is not None:
        prometheus_port = free_port(args.prometheus_port)
        config = stack.state_dir / "prometheus.yml"
        config.write_text(
            prometheus_config(
                producers=[f"{HOST}:{producer_port}"],
                processors=[f"{HOST}:{p}" for p in processor_ports],
                audits=[f"{HOST}:{audit_port}"],
                bridges=[f"{HOST}:{bridge_port}"] if bridge_port else [],
                sinks=[f"{HOST}:{sink_port}"] if sink_port else [],
                rules=RULES_FILE,
            )
        )
        data = stack.state_dir / "prometheus-data"
        shutil.rmtree(data, ignore_errors=True)
        child = spawn(
            stack,
            name="prometheus",
            role="prometheus",
            port=prometheus_port,
            env=dict(os.environ),
            argv=[
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={HOST}:{prometheus_port}",
                "--log.level=warn",
                "--storage.tsdb.retention.time=1d",
            ],
        )
        wait_http(child, "/-/ready", timeout=30)
        stack.prometheus_url = child.url

    producer = spawn(
        stack,
        name="producer",
        role="producer",
        port=producer_port,
        argv=_venv_command("sensorstream-producer", "sensorstream.producer"),
        env={
            **base_env,
            "SENSORSTREAM_METRICS_PORT": str(producer_port),
            "SENSORSTREAM_INSTANCE_ID": "producer",
            "SENSORSTREAM_RATE": str(args.rate),
            "SENSORSTREAM_SENSORS": str(args.sensors),
            "SENSORSTREAM_PARTITIONS": str(args.partitions),
        },
    )
    for index, processor_port in enumerate(processor_ports, start=1):
        spawn(
            stack,
            name=f"processor-{index}",
            role="processor",
            port=processor_port,
            argv=_venv_command("sensorstream-processor", "sensorstream.processor"),
            env={
                **base_env,
                "SENSORSTREAM_METRICS_PORT": str(processor_port),
                "SENSORSTREAM_INSTANCE_ID": f"processor-{index}",
                "SENSORSTREAM_OUTPUT_PARTITIONS": str(args.partitions),
            },
        )
    # The audit reads the same topics from their beginning, joins no group and commits
    # nothing: it never disturbs the processors. Logs at info: one line per pass.
    spawn(
        stack,
        name="audit",
        role="audit",
        port=audit_port,
        argv=[*_venv_command("sensorstream-audit", "sensorstream.audit"), "--follow"],
        env={
            **base_env,
            "SENSORSTREAM_METRICS_PORT": str(audit_port),
            "SENSORSTREAM_INSTANCE_ID": "audit",
            "SENSORSTREAM_LOG_LEVEL": "info",
        },
    )
    if stack.mosquitto and bridge_port:
        spawn(
            stack,
            name="bridge",
            role="bridge",
            port=bridge_port,
            argv=_venv_command("sensorstream-mqtt-bridge", "sensorstream.bridge"),
            env={
                **base_env,
                "SENSORSTREAM_METRICS_PORT": str(bridge_port),
                "SENSORSTREAM_INSTANCE_ID": "bridge",
                "SENSORSTREAM_MQTT_HOST": HOST,
                "SENSORSTREAM_MQTT_PORT": str(stack.mosquitto.port),
                "SENSORSTREAM_PARTITIONS": str(args.partitions),
            },
        )
        if args.devices:
            _spawn_devices(stack, args, base_env)
    if stack.postgres and sink_port:
        spawn(
            stack,
            name="sink",
            role="sink",
            port=sink_port,
            argv=_venv_command("sensorstream-sink", "sensorstream.sink"),
            env={
                **base_env,
                **stack.postgres.sink_environment(),
                "SENSORSTREAM_METRICS_PORT": str(sink_port),
                "SENSORSTREAM_INSTANCE_ID": "sink",
            },
        )
    _write_state(stack, ready=False)
    wait_http(producer, "/healthz")
    for child in stack.services("processor") + stack.services("audit"):
        wait_http(child, "/healthz")
    # Ready: the bridge is subscribed, the sink has its database and its partitions.
    for child in stack.services("bridge") + stack.services("sink"):
        wait_http(child, "/readyz")
    for child in stack.services("devices"):
        wait_log(child, "devices_connected")
    _write_state(stack, ready=True)


def _spawn_devices(stack: Stack, args: argparse.Namespace, base_env: dict[str, str]) -> None:
    """The simulated fleet, started with the bridge: what it publishes before the bridge
    has subscribed is dropped by Mosquitto, and the audit starts each sensor at the first
    seq it finds, so that costs nothing but a few readings."""
    assert stack.mosquitto is not None
    if not devices_can_avoid_collisions():
        print(
            "stack: sensorstream-mqtt-devices has no --sensor-prefix here, so its sensor ids "
            "would collide with the producer's; running the bridge without it",
            flush=True,
        )
        return
    spawn(
        stack,
        name="devices",
        role="devices",
        port=None,
        argv=_venv_command("sensorstream-mqtt-devices", "sensorstream.bridge._devices"),
        env={
            **base_env,
            **devices_environment(
                mqtt_port=stack.mosquitto.port,
                rate=args.devices_rate,
                sensors=args.devices_sensors,
            ),
        },
    )


def print_endpoints(stack: Stack) -> None:
    lines = ["", "Sensorstream local stack is up:", f"  Kafka        {stack.bootstrap}"]
    if stack.prometheus_url:
        lines.append(
            f"  Prometheus   {stack.prometheus_url}  (alerts: {stack.prometheus_url}/alerts)"
        )
    else:
        lines.append("  Prometheus   not running (apt-get install -y prometheus to add it)")
    if stack.mosquitto:
        lines.append(f"  Mosquitto    {stack.mosquitto.address}  (log {stack.mosquitto.log})")
    if stack.postgres:
        lines.append(
            f"  PostgreSQL   {stack.postgres.url()}  (deploy/postgres/pgctl psql --data-dir "
            f"{stack.postgres.data_dir}; kept until the next make run)"
            if not stack.postgres_scratch
            else f"  PostgreSQL   {stack.postgres.url()}  (data {stack.postgres.data_dir})"
        )
    for child in stack.children:
        if child.role == "prometheus":
            continue
        where = f"{child.url}/metrics" if child.url else "no metrics endpoint"
        lines.append(f"  {child.name:<12} {where}  (log {child.log})")
    lines.append(f"  state        {stack.state_dir / 'state.json'}")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def stop_stack(stack: Stack) -> None:
    """Services first (they flush and commit), then Prometheus, the servers, then Kafka."""
    services = [c for c in stack.children if c.role != "prometheus"]
    stop_children(services)
    stop_children([c for c in stack.children if c.role == "prometheus"], grace=10)
    _stop_servers(stack)
    if stack.kafka_started:
        kafkactl.stop(stack.kafka_dir, grace=2 if forced() else 15)
    left = [c.name for c in stack.children if c.process.poll() is None]
    if stack.mosquitto_dir is not None and mosquittoctl.status(stack.mosquitto_dir):
        left.append("mosquitto")
    if stack.postgres_dir is not None and pgctl.running(stack.postgres_dir):
        left.append("postgres")
    (stack.state_dir / "state.json").unlink(missing_ok=True)
    if left:
        print(f"stack: could not stop {', '.join(left)}", file=sys.stderr, flush=True)
    else:
        print("stack: stopped everything", flush=True)


def _check_running(stack: Stack) -> None:
    """A StackError if a service or a server of the stack is gone."""
    for child in stack.children:
        if child.process.poll() is not None:
            raise StackError(
                f"{child.name} exited with status {child.process.returncode}; "
                f"log {child.log}:\n{tail(child.log)}"
            )
    if stack.mosquitto_dir and stack.mosquitto and not mosquittoctl.status(stack.mosquitto_dir):
        log = stack.mosquitto.log
        raise StackError(f"Mosquitto stopped; log {log}:\n{tail(log)}")
    if stack.postgres_dir and stack.postgres and not pgctl.running(stack.postgres_dir):
        log = stack.postgres.log_file
        raise StackError(f"PostgreSQL stopped; log {log}:\n{tail(log)}")


def watch(stack: Stack, args: argparse.Namespace) -> None:
    sampler = Sampler(stack.children)
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    sampler.tick()

    def should_go_on() -> bool:
        _check_running(stack)
        return deadline is None or time.monotonic() < deadline

    if args.no_ui:
        last = 0.0
        while should_go_on():
            time.sleep(1.0)
            sampler.tick()
            if time.monotonic() - last >= args.summary_interval:
                last = time.monotonic()
                print(summary_line(stack, sampler, started), flush=True)
        return

    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(
        render(stack, sampler, started), console=console, refresh_per_second=2, screen=False
    ) as live:
        while should_go_on():
            time.sleep(1.0)
            sampler.tick()
            live.update(render(stack, sampler, started))


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _on_signal_while_stopping(_signum: int, _frame: FrameType | None) -> None:
    force_stop()
    print("stack: stopping without waiting", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stop_leftovers(state_dir)
    stack = Stack(state_dir=state_dir, kafka_dir=state_dir / "kafka")
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGHUP, _on_stop_signal)
    status = 0
    try:
        start_stack(stack, args)
        print_endpoints(stack)
        watch(stack, args)
    except (KeyboardInterrupt, StopRequested):
        print("\nstack: stopping ...", flush=True)
    except (StackError, kafkactl.KafkactlError) as exc:
        print(f"stack: {exc}", file=sys.stderr, flush=True)
        status = 1
    except BaseException:
        status = 1
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal_while_stopping)
        stop_stack(stack)
    return status


# --------------------------------------------------------------------------- leftovers


def _environ_marker(pid: int) -> str | None:
    return procctl.environ_value(pid, MARKER_ENV)


def _read_state(state_dir: Path) -> dict[str, Any]:
    state = procctl.read_json(state_dir / "state.json")
    return state if isinstance(state, dict) else {}


def _our_pids(state: dict[str, Any], state_dir: Path) -> Iterator[int]:
    """The services of ``state`` still running with this state dir's marker."""
    for service in state.get("services", []):
        pid = int(service["pid"])
        if _environ_marker(pid) == str(state_dir):
            yield pid


def _server_dirs(state: dict[str, Any], state_dir: Path) -> tuple[list[Path], list[Path]]:
    """Data dirs of the Mosquitto and PostgreSQL a stack of ``state_dir`` may have left:
    the default ones, and those ``state`` recorded (a scratch PostgreSQL dir in /tmp)."""
    mosquitto = [state_dir / "mosquitto"]
    postgres = [state_dir / "postgres"]
    for key, dirs in (("mosquitto", mosquitto), ("postgres", postgres)):
        recorded = (state.get(key) or {}).get("data_dir")
        if recorded and Path(recorded) not in dirs:
            dirs.append(Path(recorded))
    return mosquitto, postgres


def stop_leftovers(state_dir: Path) -> bool:
    """Stop what a previous run from ``state_dir`` left behind; True if anything was."""
    state = _read_state(state_dir)
    pids = list(_our_pids(state, state_dir))
    procctl.stop_groups(
        pids,
        lambda pid: _environ_marker(pid) == str(state_dir),
        grace=STOP_GRACE,
        poll=0.2,
        permission_ok=True,
    )
    stopped = bool(pids)
    mosquitto_dirs, postgres_dirs = _server_dirs(state, state_dir)
    for data_dir in mosquitto_dirs:
        stopped = mosquittoctl.stop(data_dir) or stopped
    for data_dir in postgres_dirs:
        try:
            stopped = pgctl.stop(data_dir, mode="fast") or stopped
        except pgctl.PgctlError as exc:
            print(f"stack: {exc}", file=sys.stderr, flush=True)
    if (state.get("postgres") or {}).get("scratch"):
        scratch = Path(state["postgres"]["data_dir"]).parent
        if pgctl.running(scratch / "pg") is None:
            shutil.rmtree(scratch, ignore_errors=True)
    stopped = kafkactl.stop(state_dir / "kafka", grace=15) or stopped
    (state_dir / "state.json").unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make run",
        description=(
            "Run Kafka, Prometheus, the producer, N processors and the audit locally, with "
            "the MQTT bridge (Mosquitto and a device simulator) and the sink (PostgreSQL) at "
            "the edges; live view. `stack.py stop` (make run-stop) stops a lost stack."
        ),
    )
    parser.add_argument("command", nargs="?", choices=("run", "stop"), default="run")
    parser.add_argument(
        "--processors",
        type=int,
        default=int(os.environ.get("PROCESSORS", 2)),
        help="processor replicas (default $PROCESSORS or 2)",
    )
    parser.add_argument(
        "--rate",
        default=os.environ.get("RATE", "200"),
        help="producer events per second or 'max' (default $RATE or 200)",
    )
    parser.add_argument("--sensors", type=int, default=100, help="producer sensors (default 100)")
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("PARTITIONS", 6)))
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--no-ui", action="store_true", help="print summary lines, no live view")
    parser.add_argument("--summary-interval", type=float, default=5.0)
    parser.add_argument("--kafka-port", type=int, help="default: a free port")
    parser.add_argument(
        "--prometheus-port", type=int, default=9090, help="used if free, else any free port"
    )
    parser.add_argument("--no-prometheus", action="store_true")
    edges = parser.add_argument_group(
        "edges", "the MQTT bridge and the sink; each is left out if its server is missing"
    )
    edges.add_argument(
        "--no-mqtt",
        dest="mqtt",
        action="store_false",
        help="no Mosquitto, MQTT bridge or device simulator",
    )
    edges.add_argument(
        "--no-sink", dest="sink", action="store_false", help="no PostgreSQL and no sink"
    )
    edges.add_argument(
        "--no-edges",
        action="store_true",
        help="neither (--no-mqtt --no-sink): the stack as it was without the bridge and sink",
    )
    edges.add_argument(
        "--no-devices",
        dest="devices",
        action="store_false",
        help="the bridge without the device simulator (publish to Mosquitto yourself)",
    )
    edges.add_argument(
        "--devices-rate",
        type=float,
        default=50.0,
        help="device simulator readings per second (default 50)",
    )
    edges.add_argument(
        "--devices-sensors",
        type=int,
        default=20,
        help="simulated devices, device-0000 .. (default 20)",
    )
    parser.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="never apt-get install what is missing",
    )
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.no_edges:
        args.mqtt = args.sink = False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.processors < 1:
        print("stack: --processors must be at least 1", file=sys.stderr)
        return 2
    if args.command == "stop":
        state_dir = Path(args.state_dir).resolve()
        print("stack: stopped" if stop_leftovers(state_dir) else "stack: nothing running")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
