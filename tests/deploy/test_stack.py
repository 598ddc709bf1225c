"""deploy/local/stack.py (`make run`): config generation, metrics parsing, and the real stack.

The integration class runs the whole local stack (real Kafka, producer, two processors,
the audit, real Prometheus) for about 40 seconds, evaluates every Grafana panel query and
every alert expression against that Prometheus, then stops it with SIGINT (Ctrl-C) and checks
that nothing it started is left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, require_binary, run_tool

sys.path.insert(0, str(REPO / "deploy" / "local"))

import stack

STACK = REPO / "deploy" / "local" / "stack.py"
# Dashboards on Prometheus; the PostgreSQL one is tested against a real database by
# tests/integration/sink/test_sink_grafana.py.
DASHBOARDS = sorted(
    p
    for p in (REPO / "deploy" / "grafana" / "dashboards").glob("*.json")
    if p.name != "sensorstream-postgres.json"
)
RULES = REPO / "deploy" / "prometheus" / "sensorstream.rules.yml"
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
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


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
                rules=RULES,
            )
        )
        result = run_tool("promtool", "check", "config", str(config))
        assert 0 == result.returncode, result.stdout + result.stderr

    def test_jobs_match_the_compose_jobs(self) -> None:
        """Local jobs carry the compose job names, so the same rules and dashboards work."""
        config = yaml.safe_load(
            stack.prometheus_config(
                producers=["a:1"], processors=["b:2", "c:3"], audits=["d:4"], rules=RULES
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
            },
            compose_jobs,
        ) == (
            local,
            set(local),
        )


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


class TestLiveView:
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
            ("sensorstream-processor", "1"),
            ("sensorstream-processor", "1"),
            ("sensorstream-producer", "1"),
        ] == up

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
        urls = [running_stack["state"]["prometheus"]] + [
            f"{s['url']}/metrics"
            for s in running_stack["state"]["services"]
            if s["role"] != "prometheus"
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
        assert sorted((name, "ok") for name, _ in _alerts()) == sorted(rules)

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
        """SIGINT (Ctrl-C) stops every process the stack started and exits 0."""
        process: subprocess.Popen[bytes] = running_stack["process"]
        pids = [service["pid"] for service in running_stack["state"]["services"]]
        kafka_dir = Path(running_stack["state"]["kafka"]["data_dir"])
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=90)
        actual = (status, [pid for pid in pids if _alive(pid)], stack.kafkactl.status(kafka_dir))
        assert (0, [], None) == actual, running_stack["output"].read_text()
