"""``make run``: the whole Sensorstream pipeline on this machine, without Docker.

Starts, in order: a real local Kafka (``deploy/kafka/kafkactl``, fresh data each run),
the pipeline's topics, Prometheus (Debian's package; the stack runs without it if it
cannot be installed) scraping every service and loading our alert rules, the producer,
N processors and one ``sensorstream-audit --follow``, each on its own metrics port. Then
it shows a live terminal view (rich) built from the services' ``/metrics``, or with
``--no-ui`` one summary line every few seconds. Ctrl-C (or SIGTERM, or ``--duration``)
stops everything: the services and Prometheus each lead their own process group and get
SIGTERM, then SIGKILL after a grace period; Kafka is stopped through kafkactl. A second
Ctrl-C skips the grace period.

The stack records what it started in ``<state-dir>/state.json`` (ports, pids, URLs; the
integration test reads it). ``stack.py stop`` stops a stack whose terminal went away,
touching only processes whose environment carries this state dir's marker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "kafka"))

import kafkactl  # noqa: E402

from sensorstream.schema import TOPOLOGY  # noqa: E402

__all__ = ["main", "parse_metrics", "prometheus_config"]

DEFAULT_STATE_DIR = REPO / ".cache" / "local-stack"
RULES_FILE = REPO / "deploy" / "prometheus" / "sensorstream.rules.yml"
TOPICS = tuple(spec.name for spec in TOPOLOGY)
HOST = "127.0.0.1"
MARKER_ENV = "SENSORSTREAM_LOCAL_STACK_DIR"  # not a service setting: identifies our children
STOP_GRACE = 20.0  # services flush and commit within their shutdown_timeout (15 s)
READY_TIMEOUT = 60.0
PRODUCER_JOB = "sensorstream-producer"
PROCESSOR_JOB = "sensorstream-processor"
AUDIT_JOB = "sensorstream-audit"


class StackError(Exception):
    """A start-up failure with a one-line message that says what to do."""


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """SIGTERM/SIGHUP arrived: stop like on Ctrl-C."""


# --------------------------------------------------------------------------- prerequisites


def _apt_install(packages: Sequence[str]) -> bool:
    """Install Debian packages if we may (root and apt-get present); True on success."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    print(f"stack: installing {' '.join(packages)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # Debian's prometheus package would start its own daemon on :9090; the stack starts
    # exactly the processes it needs, so no package may start a service here.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env, **quiet)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            check=False,
            env=env,
            **quiet,
        )
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    return result.returncode == 0


def ensure_kafka_prerequisites(*, install: bool) -> None:
    missing = []
    if shutil.which("java") is None:
        missing.append("openjdk-17-jre-headless")
    if shutil.which("mvn") is None:
        missing.append("maven")
    if missing and not (install and _apt_install(missing)):
        raise StackError(
            f"Kafka needs {' and '.join(missing)}: apt-get install -y {' '.join(missing)}"
        )


def ensure_prometheus(*, install: bool) -> str | None:
    """Path of the prometheus binary, installing Debian's package if needed; None if absent."""
    found = shutil.which("prometheus")
    if found is None and install and _apt_install(["prometheus"]):
        found = shutil.which("prometheus")
    return found


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    """A process we started, leading its own process group."""

    name: str
    role: str  # producer | processor | audit | prometheus
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class Stack:
    state_dir: Path
    kafka_dir: Path
    bootstrap: str = ""
    children: list[Child] = field(default_factory=list)
    prometheus_url: str | None = None
    kafka_started: bool = False

    def services(self, role: str) -> list[Child]:
        return [child for child in self.children if child.role == role]


_force = False


def _spawn(
    stack: Stack, *, name: str, role: str, argv: list[str], env: dict[str, str], port: int
) -> Child:
    log = stack.state_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, MARKER_ENV: str(stack.state_dir)},
            start_new_session=True,  # own group: Ctrl-C reaches us only; we stop it in order
            cwd=REPO,
        )
    child = Child(name=name, role=role, process=process, log=log, port=port)
    stack.children.append(child)
    return child


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_children(children: Sequence[Child], *, grace: float = STOP_GRACE) -> None:
    """SIGTERM each group, wait up to ``grace`` s (less after a second Ctrl-C), SIGKILL."""
    alive = [child for child in children if child.process.poll() is None]
    for child in alive:
        _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline and not _force:
        time.sleep(0.1)
        alive = [child for child in alive if child.process.poll() is None]
    for child in children:
        # Also the group of an exited leader: a stray grandchild must not outlive us.
        _signal_group(child.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)


def _free_port(preferred: int | None = None) -> int:
    if preferred and not kafkactl._port_in_use(preferred):
        return preferred
    return kafkactl.free_port()


def _get(url: str, timeout: float = 1.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our URLs
        return bytes(response.read())


def _wait_http(child: Child, path: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise StackError(
                f"{child.name} exited with status {child.process.returncode}; "
                f"log {child.log}:\n{_tail(child.log)}"
            )
        with contextlib.suppress(OSError, urllib.error.URLError):
            _get(child.url + path)
            return
        time.sleep(0.2)
    raise StackError(f"{child.name} did not answer {child.url}{path} within {timeout:.0f} s")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- kafka + prometheus


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


def prometheus_config(
    *,
    producers: Sequence[str],
    processors: Sequence[str],
    audits: Sequence[str],
    rules: Path,
    interval: str = "2s",
) -> str:
    """Prometheus config (JSON is YAML) scraping the local services under the compose job names."""
    jobs = [(PRODUCER_JOB, producers), (PROCESSOR_JOB, processors), (AUDIT_JOB, audits)]
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs
        ],
    }
    return json.dumps(config, indent=2) + "\n"


# --------------------------------------------------------------------------- metrics


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text format -> sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(k) == v for k, v in match.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


@dataclass
class Reading:
    at: float
    samples: Samples | None  # None: the service did not answer


class Sampler:
    """Scrapes every service once per tick and keeps the previous scrape for rates."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = [c for c in children if c.role in ("producer", "processor", "audit")]
        self.now: dict[str, Reading] = {}
        self.before: dict[str, Reading] = {}

    def tick(self) -> None:
        for child in self.children:
            at = time.monotonic()
            try:
                samples: Samples | None = parse_metrics(_get(child.url + "/metrics").decode())
            except (OSError, urllib.error.URLError, ValueError):
                samples = None
            if child.name in self.now:
                self.before[child.name] = self.now[child.name]
            self.now[child.name] = Reading(at, samples)

    def value(self, child: Child, name: str, **match: str) -> float | None:
        reading = self.now.get(child.name)
        if reading is None or reading.samples is None:
            return None
        return total(reading.samples, name, **match)

    def rate(self, child: Child, name: str, **match: str) -> float | None:
        now, before = self.now.get(child.name), self.before.get(child.name)
        if not now or not before or now.samples is None or before.samples is None:
            return None
        elapsed = now.at - before.at
        if elapsed <= 0:
            return None
        delta = total(now.samples, name, **match) - total(before.samples, name, **match)
        return max(delta, 0.0) / elapsed

    def labelled(self, child: Child, name: str, label: str) -> dict[str, float]:
        reading = self.now.get(child.name)
        if reading is None or reading.samples is None:
            return {}
        return by_label(reading.samples, name, label)

    def labelled_rate(self, child: Child, name: str, label: str) -> dict[str, float]:
        now, before = self.now.get(child.name), self.before.get(child.name)
        if not now or not before or now.samples is None or before.samples is None:
            return {}
        elapsed = max(now.at - before.at, 1e-9)
        old = by_label(before.samples, name, label)
        return {
            key: max(value - old.get(key, 0.0), 0.0) / elapsed
            for key, value in by_label(now.samples, name, label).items()
        }


def prometheus_alerts(url: str | None) -> list[dict[str, Any]] | None:
    if url is None:
        return None
    try:
        body = json.loads(_get(url + "/api/v1/alerts"))
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return list(body.get("data", {}).get("alerts", []))


# --------------------------------------------------------------------------- views


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fmt_problem(value: float | None) -> str:
    """A count that should be 0: red when it is not."""
    return f"[red]{_fmt(value, 0)}[/red]" if value else _fmt(value, 0)


def render(stack: Stack, sampler: Sampler, started: float) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    elapsed = time.monotonic() - started
    header = Text.assemble(
        ("Sensorstream local stack", "bold"),
        f"  up {elapsed:,.0f} s   Kafka {stack.bootstrap}   ",
        f"Prometheus {stack.prometheus_url or 'not running'}   ",
        ("Ctrl-C stops everything", "dim"),
    )

    producers = Table(title="Producer", expand=True)
    for column in (
        "instance",
        "target ev/s",
        "achieved ev/s",
        "acked ev/s",
        "behind s",
        "in flight",
        "errors",
    ):
        producers.add_column(column, justify="right" if column != "instance" else "left")
    for child in stack.services("producer"):
        producers.add_row(
            f"{child.name} :{child.port}",
            _fmt(sampler.value(child, "sensorstream_producer_target_rate_events_per_second")),
            _fmt(sampler.value(child, "sensorstream_producer_achieved_rate_events_per_second")),
            _fmt(sampler.rate(child, "sensorstream_producer_events_acked_total")),
            _fmt(sampler.value(child, "sensorstream_producer_behind_schedule_seconds"), 2),
            _fmt(sampler.value(child, "sensorstream_producer_events_in_flight"), 0),
            _fmt(sampler.value(child, "sensorstream_producer_send_errors_total"), 0),
        )

    processors = Table(title="Processors", expand=True)
    for column in (
        "replica",
        "partitions",
        "processed ev/s",
        "lag events",
        "lag s",
        "rebalances",
        "commits ok/failed",
        "open windows",
        "RSS MB",
        "CPU %",
    ):
        processors.add_column(column, justify="right" if column != "replica" else "left")
    partitions: dict[str, tuple[str, float, float, float]] = {}
    outcomes: dict[str, float] = {}
    outcome_rates: dict[str, float] = {}
    dead: dict[str, float] = {}
    alerts: dict[str, float] = {}
    for child in stack.services("processor"):
        lag = sampler.labelled(child, "sensorstream_processor_consumer_lag_events", "partition")
        lag_s = sampler.labelled(child, "sensorstream_processor_consumer_lag_seconds", "partition")
        consumed = sampler.labelled_rate(
            child, "sensorstream_processor_events_consumed_total", "partition"
        )
        for partition, events in lag.items():
            partitions[partition] = (
                child.name,
                events,
                lag_s.get(partition, 0.0),
                consumed.get(partition, 0.0),
            )
        for key, value in sampler.labelled(
            child, "sensorstream_processor_events_total", "outcome"
        ).items():
            outcomes[key] = outcomes.get(key, 0.0) + value
        for key, value in sampler.labelled_rate(
            child, "sensorstream_processor_events_total", "outcome"
        ).items():
            outcome_rates[key] = outcome_rates.get(key, 0.0) + value
        for key, value in sampler.labelled(
            child, "sensorstream_processor_dead_letters_total", "reason"
        ).items():
            dead[key] = dead.get(key, 0.0) + value
        for key, value in sampler.labelled(
            child, "sensorstream_processor_alerts_emitted_total", "kind"
        ).items():
            alerts[key] = alerts.get(key, 0.0) + value
        up = sampler.now.get(child.name)
        alive = child.process.poll() is None and up is not None and up.samples is not None
        cpu = sampler.rate(child, "process_cpu_seconds_total")
        commits = "sensorstream_processor_commits_total"
        rss = sampler.value(child, "process_resident_memory_bytes")
        processors.add_row(
            f"{child.name} :{child.port}" + ("" if alive else " [red](down)[/red]"),
            _fmt(sampler.value(child, "sensorstream_processor_assigned_partitions"), 0),
            _fmt(sampler.rate(child, "sensorstream_processor_events_total")),
            _fmt(sum(lag.values()) if lag else None, 0),
            _fmt(max(lag_s.values()) if lag_s else None, 1),
            _fmt(sampler.value(child, "sensorstream_processor_rebalances_total"), 0),
            f"{_fmt(sampler.value(child, commits, outcome='ok'), 0)}"
            f" / {_fmt(sampler.value(child, commits, outcome='failed'), 0)}",
            _fmt(sampler.value(child, "sensorstream_processor_open_windows"), 0),
            _fmt(None if rss is None else rss / 1e6, 0),
            _fmt(None if cpu is None else cpu * 100, 0),
        )

    lag_table = Table(title="Lag per partition", expand=True)
    for column in ("partition", "owner", "lag events", "lag s", "consumed ev/s"):
        lag_table.add_column(column, justify="right" if column != "owner" else "left")
    for partition in sorted(partitions, key=lambda p: int(p) if p.isdigit() else 0):
        owner, events, seconds, rate = partitions[partition]
        lag_table.add_row(partition, owner, _fmt(events, 0), _fmt(seconds, 1), _fmt(rate))

    outcome_table = Table(title="Outcomes (total, ev/s)", expand=True)
    outcome_table.add_column("outcome")
    outcome_table.add_column("total", justify="right")
    outcome_table.add_column("ev/s", justify="right")
    for key in sorted(outcomes):
        outcome_table.add_row(key, _fmt(outcomes[key], 0), _fmt(outcome_rates.get(key)))
    for key in sorted(k for k, v in dead.items() if v):
        outcome_table.add_row(f"dead letter: {key}", _fmt(dead[key], 0), "")

    alert_table = Table(title="Alerts", expand=True)
    alert_table.add_column("emitted by the processors (kind)")
    alert_table.add_column("total", justify="right")
    for key in sorted(alerts):
        alert_table.add_row(key, _fmt(alerts[key], 0))
    rules = prometheus_alerts(stack.prometheus_url)
    if rules is None:
        alert_table.add_row("Prometheus alert rules", "n/a")
    elif not rules:
        alert_table.add_row("Prometheus alert rules", "[green]none firing[/green]")
    for alert in rules or []:
        name = alert.get("labels", {}).get("alertname", "?")
        alert_table.add_row(
            f"[red]{name}[/red] {alert.get('labels', {}).get('instance', '')}",
            str(alert.get("state", "")),
        )

    bottom = Table.grid(expand=True)
    bottom.add_column()
    bottom.add_column()
    bottom.add_column()
    bottom.add_row(lag_table, outcome_table, alert_table)
    return Group(header, producers, processors, audit_table(stack, sampler), bottom)


def audit_table(stack: Stack, sampler: Sampler) -> Any:
    """The audit's accounting: every reading in exactly one aggregate or in the DLQ."""
    from rich.table import Table

    table = Table(title="Audit (sensorstream-audit --follow)", expand=True)
    for column in (
        "instance",
        "produced",
        "aggregated",
        "dead-lettered",
        "missing",
        "counted twice",
        "conflicting windows",
        "partial windows",
        "sensors with problems",
        "last pass",
    ):
        table.add_column(column, justify="right" if column != "instance" else "left")
    readings, windows = "sensorstream_audit_readings", "sensorstream_audit_windows"
    for child in stack.services("audit"):
        last = sampler.value(child, "sensorstream_audit_last_pass_timestamp_seconds")
        table.add_row(
            f"{child.name} :{child.port}",
            _fmt(sampler.value(child, readings, state="produced"), 0),
            _fmt(sampler.value(child, readings, state="aggregated"), 0),
            _fmt(sampler.value(child, readings, state="dead_lettered"), 0),
            _fmt_problem(sampler.value(child, readings, state="missing")),
            _fmt_problem(sampler.value(child, readings, state="duplicated")),
            _fmt_problem(sampler.value(child, windows, kind="conflicting")),
            _fmt(sampler.value(child, windows, kind="partial"), 0),
            _fmt(sampler.value(child, "sensorstream_audit_sensors_with_problems"), 0),
            "-" if not last else f"{max(time.time() - last, 0.0):,.0f} s ago",
        )
    return table


def summary_line(stack: Stack, sampler: Sampler, started: float) -> str:
    produced = sum(
        sampler.rate(c, "sensorstream_producer_events_acked_total") or 0.0
        for c in stack.services("producer")
    )
    processed = sum(
        sampler.rate(c, "sensorstream_processor_events_total") or 0.0
        for c in stack.services("processor")
    )
    lag = sum(
        sampler.value(c, "sensorstream_processor_consumer_lag_events") or 0.0
        for c in stack.services("processor")
    )
    readings = "sensorstream_audit_readings"
    missing = sum(
        sampler.value(c, readings, state="missing") or 0.0 for c in stack.services("audit")
    )
    twice = sum(
        sampler.value(c, readings, state="duplicated") or 0.0 for c in stack.services("audit")
    )
    firing = prometheus_alerts(stack.prometheus_url)
    return (
        f"stack: t={time.monotonic() - started:,.0f}s produced {produced:,.1f} ev/s, "
        f"processed {processed:,.1f} ev/s, lag {lag:,.0f} events, "
        f"audit missing {missing:,.0f} / counted twice {twice:,.0f}, "
        f"alerts {'n/a' if firing is None else len(firing)}"
    )


# --------------------------------------------------------------------------- start / stop


def _write_state(stack: Stack, *, ready: bool) -> None:
    state = {
        "ready": ready,
        "kafka": {"bootstrap": stack.bootstrap, "data_dir": str(stack.kafka_dir)},
        "prometheus": stack.prometheus_url,
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
    path = stack.state_dir / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _venv_command(script: str, module: str) -> list[str]:
    executable = Path(sys.executable).parent / script
    return [str(executable)] if executable.exists() else [sys.executable, "-m", module]


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

    # Fresh broker data every run: the view then starts at zero and no old lag lingers.
    kafkactl.stop(stack.kafka_dir, grace=10)
    shutil.rmtree(stack.kafka_dir, ignore_errors=True)
    port = _free_port(args.kafka_port)
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

    base_env = {
        **os.environ,
        "SENSORSTREAM_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SENSORSTREAM_METRICS_HOST": HOST,
        "SENSORSTREAM_LOG_FORMAT": "json",
    }
    # Producer, processors, audit: distinct free ports (the kernel may hand one out twice).
    ports: list[int] = []
    while len(ports) < args.processors + 2:
        candidate = kafkactl.free_port()
        if candidate not in ports:
            ports.append(candidate)
    producer_port, *processor_ports, audit_port = ports

    if prometheus is not None:
        prometheus_port = _free_port(args.prometheus_port)
        config = stack.state_dir / "prometheus.yml"
        config.write_text(
            prometheus_config(
                producers=[f"{HOST}:{producer_port}"],
                processors=[f"{HOST}:{p}" for p in processor_ports],
                audits=[f"{HOST}:{audit_port}"],
                rules=RULES_FILE,
            )
        )
        data = stack.state_dir / "prometheus-data"
        shutil.rmtree(data, ignore_errors=True)
        child = _spawn(
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
        _wait_http(child, "/-/ready", timeout=30)
        stack.prometheus_url = child.url

    producer = _spawn(
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
        _spawn(
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
    _spawn(
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
    _write_state(stack, ready=False)
    _wait_http(producer, "/healthz")
    for child in stack.services("processor") + stack.services("audit"):
        _wait_http(child, "/healthz")
    _write_state(stack, ready=True)


def print_endpoints(stack: Stack) -> None:
    lines = ["", "Sensorstream local stack is up:", f"  Kafka        {stack.bootstrap}"]
    if stack.prometheus_url:
        lines.append(
            f"  Prometheus   {stack.prometheus_url}  (alerts: {stack.prometheus_url}/alerts)"
        )
    else:
        lines.append("  Prometheus   not running (apt-get install -y prometheus to add it)")
    for child in stack.children:
        if child.role != "prometheus":
            lines.append(f"  {child.name:<12} {child.url}/metrics  (log {child.log})")
    lines.append(f"  state        {stack.state_dir / 'state.json'}")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def stop_stack(stack: Stack) -> None:
    """Services first (they flush and commit), then Prometheus, then Kafka."""
    services = [c for c in stack.children if c.role != "prometheus"]
    stop_children(services)
    stop_children([c for c in stack.children if c.role == "prometheus"], grace=10)
    if stack.kafka_started:
        kafkactl.stop(stack.kafka_dir, grace=2 if _force else 15)
    left = [c.name for c in stack.children if c.process.poll() is None]
    (stack.state_dir / "state.json").unlink(missing_ok=True)
    if left:
        print(f"stack: could not stop {', '.join(left)}", file=sys.stderr, flush=True)
    else:
        print("stack: stopped everything", flush=True)


def watch(stack: Stack, args: argparse.Namespace) -> None:
    sampler = Sampler(stack.children)
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    sampler.tick()

    def should_go_on() -> bool:
        for child in stack.children:
            if child.process.poll() is not None:
                raise StackError(
                    f"{child.name} exited with status {child.process.returncode}; "
                    f"log {child.log}:\n{_tail(child.log)}"
                )
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
    global _force
    _force = True
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
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{MARKER_ENV}=".encode()
    for entry in environ:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def _our_pids(state_dir: Path) -> Iterator[int]:
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return
    for service in state.get("services", []):
        pid = int(service["pid"])
        if _environ_marker(pid) == str(state_dir):
            yield pid


def stop_leftovers(state_dir: Path) -> bool:
    """Stop what a previous run from ``state_dir`` left behind; True if anything was."""
    pids = list(_our_pids(state_dir))
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline and any(_environ_marker(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _environ_marker(pid) == str(state_dir):
            _signal_group(pid, signal.SIGKILL)
    kafka = kafkactl.stop(state_dir / "kafka", grace=15)
    (state_dir / "state.json").unlink(missing_ok=True)
    return bool(pids) or kafka


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make run",
        description="Run Kafka, Prometheus, the producer and N processors locally, live view.",
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
        help="events per second or 'max' (default $RATE or 200)",
    )
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("PARTITIONS", 6)))
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--no-ui", action="store_true", help="print summary lines, no live view")
    parser.add_argument("--summary-interval", type=float, default=5.0)
    parser.add_argument("--kafka-port", type=int, help="default: a free port")
    parser.add_argument(
        "--prometheus-port", type=int, default=9090, help="used if free, else any free port"
    )
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="never apt-get install what is missing",
    )
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
