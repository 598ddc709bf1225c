"""deploy/local/stack.py (`make run`): config generation, metrics parsing, and the real stack.

The integration class runs the whole local stack (real Kafka, producer, two processors,
the audit, real Prometheus, and at the edges real Mosquitto with the MQTT bridge and the
device simulator, real PostgreSQL with the sink) for about 40 seconds, evaluates every
Grafana panel query and every alert expression against that Prometheus, checks that the
devices' readings went through the bridge and that rows reached PostgreSQL, then stops it
with SIGINT (Ctrl-C) and checks that nothing it started is left running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, require_binary, run_tool

sys.path.insert(0, str(REPO / "deploy" / "local"))

import stack
import stack_prereqs

STACK = REPO / "deploy" / "local" / "stack.py"
# Dashboards on Prometheus; the PostgreSQL one is tested against a real database by
# tests/integration/sink/test_sink_grafana.py.
DASHBOARDS = sorted(
    p
    for p in (REPO / "deploy" / "grafana" / "dashboards").glob("*.json")
    if p.name != "sensorstream-postgres.json"
)
RULES = REPO / "deploy" / "prometheus" / "sensorstream.rules.yml"
PRODUCER_SENSORS = 100  # the stack's defaults: --sensors and --devices-sensors
DEVICE_SENSORS = 20
RUN_SECONDS = 40.0
START_TIMEOUT = 180.0
RATE_INTERVAL = "20s"  # what Grafana's $__rate_interval becomes at a 2 s scrape interval
METRIC = re.compile(r"\b(sensorstream_[a-z_]+|process_[a-z_]+|up)\b(?!\s*\()")


def _panel_targets() -> list[tuple[str, str]]:
    targets = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                targets.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return targets


def _variables() -> list[tuple[str, str]]:
    return [
        (var["name"], var["definition"])
        for path in DASHBOARDS
        for var in json.loads(path.read_text())["templating"]["list"]
    ]


def _alerts() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [
        (rule["alert"], rule["expr"])
        for group in groups
        for rule in group["rules"]
        if "alert" in rule  # not the recording rules
    ]


def _substitute(expr: str) -> str:
    """Grafana's variables as the dashboard's 'All' selection would expand them."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$instance", ".*")
        .replace("$partition", ".*")
    )


def _api(base: str, path: str, **params: str) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class TestPrometheusConfig:
    def test_promtool_accepts_generated_config(self, tmp_path: Path) -> None:
        """The generated Prometheus config (with our rules) passes promtool check config."""
        config = tmp_path / "prometheus.yml"
        config.write_text(
            stack.prometheus_config(
                producers=["127.0.0.1:8000"],
                processors=["127.0.0.1:8001", "127.0.0.1:8002"],
                audits=["127.0.0.1:8003"],
                bridges=["127.0.0.1:8004"],
                sinks=["127.0.0.1:8005"],
                rules=RULES,
            )
        )
        result = run_tool("promtool", "check", "config", str(config))
        assert 0 == result.returncode, result.stdout + result.stderr

    def test_jobs_match_the_compose_jobs(self) -> None:
        """Local jobs carry the compose job names, so the same rules and dashboards work."""
        config = yaml.safe_load(
            stack.prometheus_config(
                producers=["a:1"],
                processors=["b:2", "c:3"],
                audits=["d:4"],
                bridges=["e:5"],
                sinks=["f:6"],
                rules=RULES,
            )
        )
        compose = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
        compose_jobs = {job["job_name"] for job in compose["scrape_configs"]} - {"prometheus"}
        local = {
            job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
        }
        assert (
            {
                "sensorstream-producer": ["a:1"],
                "sensorstream-processor": ["b:2", "c:3"],
                "sensorstream-audit": ["d:4"],
                "sensorstream-bridge": ["e:5"],
                "sensorstream-sink": ["f:6"],
            },
            compose_jobs,
        ) == (
            local,
            set(local),
        )

    def test_bridge_and_sink_jobs_only_when_they_run(self) -> None:
        """Without the bridge and the sink (--no-edges, no Mosquitto or PostgreSQL) their
        jobs are left out, not given no target."""

        def jobs(**edges: list[str]) -> dict[str, list[str]]:
            config = yaml.safe_load(
                stack.prometheus_config(
                    producers=["a:1"], processors=["b:2"], audits=["c:3"], rules=RULES, **edges
                )
            )
            return {
                job["job_name"]: job["static_configs"][0]["targets"]
                for job in config["scrape_configs"]
            }

        with_edges = jobs(bridges=["e:5"], sinks=["f:6"])
        assert (
            {"sensorstream-bridge": ["e:5"], "sensorstream-sink": ["f:6"]},
            {"sensorstream-producer", "sensorstream-processor", "sensorstream-audit"},
        ) == (
            {k: v for k, v in with_edges.items() if k not in jobs()},
            set(jobs(bridges=[], sinks=[])),
        )


class TestOptions:
    def test_no_edges_turns_off_bridge_and_sink(self) -> None:
        """--no-edges is --no-mqtt --no-sink; by default both run, with the devices."""
        default, none, mqtt_only = (
            stack.parse_args(argv) for argv in ([], ["--no-edges"], ["--no-sink"])
        )
        assert [(True, True, True), (False, False, True), (True, False, True)] == [
            (args.mqtt, args.sink, args.devices) for args in (default, none, mqtt_only)
        ]

    def test_devices_never_share_a_sensor_id_with_the_producer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The simulator's settings as the stack passes them name other sensors than the
        producer's: the audit must see one seq stream per sensor."""
        from sensorstream.bridge.settings import DevicesSettings
        from sensorstream.producer._simulation import SensorFleet

        for key, value in stack.devices_environment(mqtt_port=1883, rate=50, sensors=20).items():
            monkeypatch.setenv(key, value)
        settings = DevicesSettings()
        devices = SensorFleet(settings.sensors, id_prefix=settings.sensor_prefix).sensor_ids
        producer = set(SensorFleet(PRODUCER_SENSORS).sensor_ids)
        assert (20, 50.0, 1883, []) == (
            len(devices),
            settings.rate,
            settings.mqtt_port,
            [sensor for sensor in devices if sensor in producer],
        )

    def test_help_names_the_edge_flags(self) -> None:
        """--help lists the flags that leave the bridge and the sink out."""
        text = stack.build_parser().format_help()
        flags = ["--no-mqtt", "--no-sink", "--no-edges", "--no-devices", "--devices-rate"]
        assert [] == [flag for flag in flags if flag not in text]


class TestPostgresLocation:
    def test_searchable_by(self) -> None:
        """A directory behind a parent of mode 0700 is out of another user's reach; one
        whose parents are all 0755 is not; the owner may enter its own 0700 dir."""
        base = Path(tempfile.mkdtemp())  # not pytest's tmp dir: its parent is 0700
        try:
            base.chmod(0o755)
            closed, open_ = base / "closed", base / "open"
            (closed / "inner").mkdir(parents=True)
            (open_ / "inner").mkdir(parents=True)
            closed.chmod(0o700)
            open_.chmod(0o755)
            stranger = 54321  # owns nothing here and is in no group of it
            actual = (
                stack_prereqs.searchable_by(closed / "inner", stranger, set()),
                stack_prereqs.searchable_by(open_ / "inner" / "not-yet", stranger, set()),
                stack_prereqs.searchable_by(closed / "inner", closed.stat().st_uid, set()),
            )
        finally:
            shutil.rmtree(base)
        assert (False, True, True) == actual

    def test_unreachable_state_dir_gets_a_scratch_dir(self, tmp_path: Path) -> None:
        """Run as root under pytest's 0700 tmp dir, PostgreSQL's data goes to a 0755 dir
        of its own in /tmp; otherwise it stays in the state dir."""
        tmp_path.chmod(0o700)
        location, scratch = stack.postgres_location(tmp_path / "state")
        try:
            if os.geteuid() == 0:
                expected = (True, "pg", 0o755, True)
                actual = (
                    scratch,
                    location.name,
                    location.parent.stat().st_mode & 0o777,
                    stack_prereqs.searchable_by(location.parent, 12345, set()),
                )
            else:
                expected, actual = (tmp_path / "state" / "postgres", False), (location, scratch)
        finally:
            if scratch:
                location.parent.rmdir()
        assert expected == actual

    def test_leftovers_include_the_recorded_scratch_dir(self, tmp_path: Path) -> None:
        """`stack.py stop` stops the servers of the default dirs and of those recorded."""
        state = {"postgres": {"data_dir": "/tmp/sensorstream-stack-pg-x/pg", "scratch": True}}
        assert (
            [tmp_path / "mosquitto"],
            [tmp_path / "postgres", Path("/tmp/sensorstream-stack-pg-x/pg")],
        ) == stack._server_dirs(state, tmp_path)


class TestParseMetrics:
    def test_counters_and_labels(self) -> None:
        """The text format becomes sample name -> [(labels, value)]."""
        text = (
            "# HELP sensorstream_processor_events_total Consumed events by outcome.\n"
            "# TYPE sensorstream_processor_events_total counter\n"
            'sensorstream_processor_events_total{outcome="ok"} 12.0\n'
            'sensorstream_processor_events_total{outcome="late"} 3.0\n'
        )
        samples = stack.parse_metrics(text)
        expected = {
            "sensorstream_processor_events_total": [
                ({"outcome": "ok"}, 12.0),
                ({"outcome": "late"}, 3.0),
            ]
        }
        assert expected == samples

    def test_total_and_by_label(self) -> None:
        """total() sums matching samples; by_label() groups by one label."""
        samples = {"x_total": [({"p": "0"}, 2.0), ({"p": "1"}, 3.0), ({"p": "1"}, 1.0)]}
        assert (6.0, 4.0, {"0": 2.0, "1": 4.0}) == (
            stack.total(samples, "x_total"),
            stack.total(samples, "x_total", p="1"),
            stack.by_label(samples, "x_total", "p"),
        )


class _Running:
    """Stands in for a child's Popen: a process that is still running."""

    pid = 0
    returncode = None

    def poll(self) -> None:
        return None


AUDIT_METRICS = """\
sensorstream_audit_readings{state="produced"} 1200.0
sensorstream_audit_readings{state="aggregated"} 1150.0
sensorstream_audit_readings{state="dead_lettered"} 20.0
sensorstream_audit_readings{state="missing"} 3.0
sensorstream_audit_readings{state="duplicated"} 0.0
sensorstream_audit_windows{kind="conflicting"} 0.0
sensorstream_audit_windows{kind="partial"} 1.0
sensorstream_audit_sensors_with_problems 2.0
sensorstream_audit_last_pass_timestamp_seconds 0.0
"""


def _audited_stack(tmp_path: Path) -> tuple[stack.Stack, stack.Sampler]:
    audit = stack.Child(
        name="audit",
        role="audit",
        process=_Running(),  # type: ignore[arg-type]
        log=tmp_path / "audit.log",
        port=8002,
    )
    local = stack.Stack(state_dir=tmp_path, kafka_dir=tmp_path / "kafka", children=[audit])
    sampler = stack.Sampler(local.children)
    sampler.now["audit"] = stack.Reading(time.monotonic(), stack.parse_metrics(AUDIT_METRICS))
    return local, sampler


BRIDGE_METRICS = """\
sensorstream_bridge_messages_received_total {received}
sensorstream_bridge_records_produced_total {produced}
sensorstream_bridge_dead_letters_total{{reason="not_json"}} 2.0
sensorstream_bridge_dead_letters_total{{reason="empty"}} 1.0
sensorstream_bridge_duplicates_dropped_total 4.0
sensorstream_bridge_messages_in_flight 7.0
sensorstream_bridge_mqtt_connected 1.0
"""

SINK_METRICS = """\
sensorstream_sink_rows_written_total{{table="aggregates"}} {aggregates}
sensorstream_sink_rows_written_total{{table="alerts"}} {alerts}
sensorstream_sink_batches_total{{outcome="committed"}} {batches}
sensorstream_sink_batches_total{{outcome="aborted"}} 0.0
sensorstream_sink_consumer_lag_records{{topic="aggregates",partition="0"}} 5.0
sensorstream_sink_consumer_lag_records{{topic="alerts",partition="0"}} 3.0
sensorstream_sink_database_up 1.0
"""


def _edges_stack(tmp_path: Path) -> tuple[stack.Stack, stack.Sampler]:
    """A bridge scraped twice 1 s apart, a sink scraped 11 times 1 s apart."""
    running: Any = _Running()
    children = [
        stack.Child(name=name, role=name, process=running, log=tmp_path / name, port=port)
        for name, port in (("bridge", 8004), ("sink", 8005))
    ]
    local = stack.Stack(state_dir=tmp_path, kafka_dir=tmp_path / "kafka", children=children)
    sampler = stack.Sampler(local.children)
    start = time.monotonic() - 10.0
    bridge = [
        stack.Reading(start + t, stack.parse_metrics(BRIDGE_METRICS.format(received=r, produced=p)))
        for t, r, p in ((9, 100, 90), (10, 150, 130))
    ]
    # The sink writes in bursts: 20 aggregate rows a second for 9 s, none in the last one.
    sink = [
        stack.Reading(
            start + t,
            stack.parse_metrics(
                SINK_METRICS.format(aggregates=min(t, 9) * 20, alerts=min(t, 9), batches=min(t, 9))
            ),
        )
        for t in range(11)
    ]
    for name, readings in (("bridge", bridge), ("sink", sink)):
        sampler.history[name] = deque(readings)
        sampler.before[name], sampler.now[name] = readings[-2], readings[-1]
    return local, sampler


class TestLiveView:
    def test_bridge_row_shows_its_rates(self, tmp_path: Path) -> None:
        """The bridge's row: MQTT in/s, Kafka acked/s, DLQ/s and total, redeliveries
        dropped, in flight, MQTT connected, from its real metric names."""
        from rich.console import Console

        local, sampler = _edges_stack(tmp_path)
        console = Console(record=True, width=300)
        console.print(stack.render(local, sampler, time.monotonic()))
        row = next(line for line in console.export_text().splitlines() if "bridge :8004" in line)
        cells = [cell.strip() for cell in row.split("│") if cell.strip()]
        assert ["bridge :8004", "50.0", "40.0", "0.0", "3", "4", "7", "up"] == cells[:8]

    def test_sink_row_shows_rows_per_second_over_a_window(self, tmp_path: Path) -> None:
        """The sink's rows/s are over 10 s (it writes a window's rows at once), so a
        second without a batch does not show 0; lag is the sum over its partitions."""
        from rich.console import Console

        local, sampler = _edges_stack(tmp_path)
        console = Console(record=True, width=300)
        console.print(stack.render(local, sampler, time.monotonic()))
        row = next(line for line in console.export_text().splitlines() if "sink :8005" in line)
        cells = [cell.strip() for cell in row.split("│") if cell.strip()]
        # Over t=0 .. 10: aggregates 0 -> 180 (18/s), alerts and batches 0 -> 9 (0.9/s).
        assert ["sink :8005", "18.0", "0.9", "189", "0.9", "8", "up"] == cells[-7:]

    def test_summary_line_has_bridge_and_sink(self, tmp_path: Path) -> None:
        """--no-ui's line gives the bridge's messages in / acked / DLQ and the sink's rows/s."""
        local, sampler = _edges_stack(tmp_path)
        line = stack.summary_line(local, sampler, time.monotonic())
        expected = "bridge 50.0 msg/s in / 40.0 acked / DLQ 3, sink 18.9 rows/s (lag 8), "
        assert expected in line, line

    def test_summary_line_without_edges(self, tmp_path: Path) -> None:
        """A stack without bridge and sink says nothing about them."""
        local, sampler = _audited_stack(tmp_path)
        line = stack.summary_line(local, sampler, time.monotonic())
        assert ("bridge" in line, "sink" in line) == (False, False)

    def test_audit_row_shows_the_accounting(self, tmp_path: Path) -> None:
        """The live view's Audit table has one row per audit with its figures, in order."""
        from rich.console import Console

        local, sampler = _audited_stack(tmp_path)
        console = Console(record=True, width=240)
        console.print(stack.render(local, sampler, time.monotonic()))
        row = next(line for line in console.export_text().splitlines() if "audit :8002" in line)
        cells = [cell.strip() for cell in row.strip(" │|").split("│")]
        assert ["audit :8002", "1,200", "1,150", "20", "3", "0", "0", "1", "2", "-"] == cells

    def test_summary_line_counts_missing_and_twice(self, tmp_path: Path) -> None:
        """--no-ui's summary line says what the audit finds missing and counted twice."""
        local, sampler = _audited_stack(tmp_path)
        line = stack.summary_line(local, sampler, time.monotonic())
        assert "audit missing 3 / counted twice 0," in line


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The local stack started as `make run` would, with --no-ui; stopped at the end."""
    require_binary("prometheus")
    for name, present in (
        ("mosquitto", stack_prereqs.ensure_mosquitto(install=False)),
        ("postgresql", stack_prereqs.ensure_postgres(install=False)),
    ):
        if not present:
            pytest.fail(f"{name} is not installed: deploy/install-prereqs")
    state_dir = tmp_path_factory.mktemp("local-stack")
    output = state_dir / "stack.out"
    prometheus_port = stack.kafkactl.free_port()
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, str(STACK), "--no-ui", "--no-install", "--processors", "2",
                "--rate", "200", "--duration", "600", "--state-dir", str(state_dir),
                "--prometheus-port", str(prometheus_port), "--summary-interval", "10",
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=REPO,
        )  # fmt: skip
    info: dict[str, Any] = {"process": process, "state_dir": state_dir, "output": output}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and process.poll() is None:
            try:
                state = json.loads((state_dir / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("ready"):
                break
            time.sleep(0.5)
        if not state.get("ready"):
            pytest.fail(f"the stack did not come up:\n{output.read_text(errors='replace')}")
        info["state"] = state
        time.sleep(RUN_SECONDS)
        yield info
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        stack.stop_leftovers(state_dir)


@pytest.mark.integration
class TestLocalStack:
    def test_services_and_prometheus_are_up(self, running_stack: dict[str, Any]) -> None:
        """Prometheus scrapes the producer, both processors and the audit successfully."""
        base = running_stack["state"]["prometheus"]
        result = _api(base, "/api/v1/query", query='up{job=~"sensorstream-.*"}')["data"]["result"]
        up = sorted((r["metric"]["job"], r["value"][1]) for r in result)
        assert [
            ("sensorstream-audit", "1"),
            ("sensorstream-bridge", "1"),
            ("sensorstream-processor", "1"),
            ("sensorstream-processor", "1"),
            ("sensorstream-producer", "1"),
            ("sensorstream-sink", "1"),
        ] == up

    def test_bridge_forwards_the_devices_readings(self, running_stack: dict[str, Any]) -> None:
        """The device simulator publishes to Mosquitto and the bridge forwards to Kafka: its
        acknowledged records are counted, and nothing went to its DLQ."""
        base = running_stack["state"]["prometheus"]

        def value(query: str) -> float:
            result = _api(base, "/api/v1/query", query=query)["data"]["result"]
            return sum(float(r["value"][1]) for r in result) if result else -1.0

        received = value("sensorstream_bridge_messages_received_total")
        produced = value("sensorstream_bridge_records_produced_total")
        dead = value("sum(sensorstream_bridge_dead_letters_total)")
        assert (True, True, 0.0) == (received > 0, produced > 0, dead), (received, produced)

    def test_devices_and_producer_are_separate_sensors(self, running_stack: dict[str, Any]) -> None:
        """The audit sees the producer's and the devices' sensors apart (120 sensors, one
        seq stream each): no input seq repeated or out of order, as a shared id would cause."""
        base = running_stack["state"]["prometheus"]
        sensors = _api(base, "/api/v1/query", query="sensorstream_audit_sensors")["data"]["result"]
        anomalies = _api(base, "/api/v1/query", query="sensorstream_audit_input_anomalies")
        found = {
            r["metric"]["kind"]: float(r["value"][1])
            for r in anomalies["data"]["result"]
            if r["metric"]["kind"] in ("duplicate", "reordered")
        }
        assert (PRODUCER_SENSORS + DEVICE_SENSORS, {"duplicate": 0.0, "reordered": 0.0}) == (
            int(float(sensors[0]["value"][1])) if sensors else None,
            found,
        )

    def test_sink_writes_rows_to_postgres(self, running_stack: dict[str, Any]) -> None:
        """Aggregates reached PostgreSQL, of the producer's sensors and of the devices'
        (readings that came over MQTT): counted in the database itself."""
        server = stack.pgctl.recorded(Path(running_stack["state"]["postgres"]["data_dir"]))
        assert server is not None, running_stack["state"]["postgres"]
        out = stack.pgctl.psql(
            server,
            "SELECT count(*) FILTER (WHERE sensor_id LIKE 'sensor-%'), "
            "count(*) FILTER (WHERE sensor_id LIKE 'device-%') FROM aggregates",
        )
        producer_rows, device_rows = (int(n) for n in out.strip().split("|"))
        assert (True, True) == (producer_rows > 0, device_rows > 0), out

    def test_audit_follows_the_pipeline(self, running_stack: dict[str, Any]) -> None:
        """The audit has passed over the live topics: it saw readings produced and readings
        aggregated, and it is ready (ready after its first pass)."""
        base = running_stack["state"]["prometheus"]
        audit = next(s for s in running_stack["state"]["services"] if s["role"] == "audit")
        result = _api(base, "/api/v1/query", query="sensorstream_audit_readings")["data"]["result"]
        figures = {r["metric"]["state"]: float(r["value"][1]) for r in result}
        try:
            with urllib.request.urlopen(f"{audit['url']}/readyz", timeout=5) as response:
                ready = response.status
        except urllib.error.HTTPError as exc:  # 503 until the first pass
            ready = exc.code
        assert (200, True, True) == (
            ready,
            figures.get("produced", 0) > 0,
            figures.get("aggregated", 0) > 0,
        ), figures

    def test_prints_endpoints(self, running_stack: dict[str, Any]) -> None:
        """The stack says where Prometheus and every metrics endpoint are."""
        text = running_stack["output"].read_text()
        urls = [
            running_stack["state"]["prometheus"],
            running_stack["state"]["mosquitto"]["address"],
        ]
        urls += [
            f"{s['url']}/metrics"
            for s in running_stack["state"]["services"]
            if s["role"] != "prometheus" and s["url"]
        ]
        assert [] == [url for url in urls if url not in text]

    @pytest.mark.parametrize(
        ("panel", "expr"), _panel_targets(), ids=[t for t, _ in _panel_targets()]
    )
    def test_panel_query_returns_data(
        self, running_stack: dict[str, Any], panel: str, expr: str
    ) -> None:
        """Every Grafana panel query returns data from the running pipeline."""
        base = running_stack["state"]["prometheus"]
        body = _api(base, "/api/v1/query", query=_substitute(expr))
        assert ("success", True) == (body["status"], bool(body["data"]["result"])), panel

    @pytest.mark.parametrize(("name", "definition"), _variables())
    def test_template_variable_has_values(
        self, running_stack: dict[str, Any], name: str, definition: str
    ) -> None:
        """label_values() of each template variable finds values."""
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
        assert match is not None, definition
        base = running_stack["state"]["prometheus"]
        body = _api(base, f"/api/v1/label/{match.group(2)}/values", **{"match[]": match.group(1)})
        assert ("success", True) == (body["status"], bool(body["data"])), name

    @pytest.mark.parametrize(("alert", "expr"), _alerts(), ids=[a for a, _ in _alerts()])
    def test_alert_expression_evaluates(
        self, running_stack: dict[str, Any], alert: str, expr: str
    ) -> None:
        """Every alert expression evaluates, and every metric it reads has series."""
        base = running_stack["state"]["prometheus"]
        body = _api(base, "/api/v1/query", query=expr)
        missing = [
            name
            for name in sorted(set(METRIC.findall(expr)))
            if not _api(base, "/api/v1/query", query=f"count({name})")["data"]["result"]
        ]
        assert ("success", []) == (body["status"], missing), alert

    def test_rules_are_loaded_and_healthy(self, running_stack: dict[str, Any]) -> None:
        """Prometheus loaded every rule and evaluates each without error."""
        base = running_stack["state"]["prometheus"]
        rules = [
            (rule["name"], rule["health"])
            for group in _api(base, "/api/v1/rules")["data"]["groups"]
            for rule in group["rules"]
        ]
        groups = yaml.safe_load(RULES.read_text())["groups"]
        names = [rule.get("alert") or rule["record"] for g in groups for rule in g["rules"]]
        assert sorted((name, "ok") for name in names) == sorted(rules)

    def test_topics_are_created_as_declared(self, running_stack: dict[str, Any]) -> None:
        """The stack's four topics have the declared layout and configs (the DLQ takes
        4 MiB dead letters): sensorstream-topics --check finds nothing to change."""
        bootstrap = running_stack["state"]["kafka"]["bootstrap"]
        script = Path(sys.executable).parent / "sensorstream-topics"
        result = subprocess.run(
            [str(script), "--bootstrap-servers", bootstrap, "--check", "--log-level", "warning"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (0, "") == (result.returncode, result.stderr), result.stdout

    def test_ctrl_c_stops_everything(self, running_stack: dict[str, Any]) -> None:
        """SIGINT (Ctrl-C) stops every process the stack started, Mosquitto and PostgreSQL
        among them, removes PostgreSQL's scratch dir if it had one, and exits 0."""
        process: subprocess.Popen[bytes] = running_stack["process"]
        state = running_stack["state"]
        mosquitto, postgres = state["mosquitto"], state["postgres"]
        pids = [service["pid"] for service in state["services"]]
        pids += [mosquitto["pid"], postgres["pid"]]
        kafka_dir = Path(state["kafka"]["data_dir"])
        mosquitto_dir, postgres_dir = Path(mosquitto["data_dir"]), Path(postgres["data_dir"])
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=90)
        actual = (
            status,
            [pid for pid in pids if _alive(pid)],
            stack.kafkactl.status(kafka_dir),
            stack.mosquittoctl.status(mosquitto_dir),
            stack.pgctl.running(postgres_dir),
            postgres["scratch"] and postgres_dir.exists(),
        )
        assert (0, [], None, None, None, False) == actual, running_stack["output"].read_text()
        assert len(pids) == len(set(pids)) == len(state["services"]) + 2, pids
