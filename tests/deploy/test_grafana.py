"""deploy/grafana: dashboards are valid, ids unique, provisioning finds them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO
from prometheus_client import CollectorRegistry

from sensorstream.audit._metrics import AuditMetrics

GRAFANA = REPO / "deploy" / "grafana"
# Dashboards on Prometheus; the PostgreSQL one is tested against a real database by
# tests/integration/sink/test_sink_grafana.py.
DASHBOARDS = sorted(
    p for p in (GRAFANA / "dashboards").glob("*.json") if p.name != "sensorstream-postgres.json"
)
METRIC = re.compile(r"\b((?:sensorstream|process)_[a-z_]+)")
# Metric names the services promise (team brief); the dashboards may use nothing else.
KNOWN_PREFIXES = (
    "sensorstream_producer_",
    "sensorstream_processor_",
    "sensorstream_audit_",
    "process_",
)


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _audit_metric_names() -> set[str]:
    """The metric families sensorstream-audit --follow exports (all gauges)."""
    registry = CollectorRegistry()
    AuditMetrics(registry)
    return {family.name for family in registry.collect()}


def _row(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels under the (expanded) row ``title``, up to the next row."""
    panels: list[dict[str, Any]] = []
    inside = False
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            inside = panel["title"] == title
        elif inside:
            panels.append(panel)
    return panels


def _compose_mounts() -> dict[str, str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


class TestDashboards:
    def test_there_is_a_dashboard(self) -> None:
        """At least one dashboard ships."""
        assert DASHBOARDS

    @pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
    def test_unique_panel_ids(self, path: Path) -> None:
        """Every panel (rows included) has its own id."""
        ids = [panel["id"] for panel in _panels(_load(path))]
        assert len(ids) == len(set(ids))

    @pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
    def test_template_variables(self, path: Path) -> None:
        """The dashboard can be filtered by instance and by partition."""
        names = {var["name"] for var in _load(path)["templating"]["list"]}
        assert {"instance", "partition"} <= names

    @pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
    def test_queries_use_the_provisioned_datasource(self, path: Path) -> None:
        """Every panel queries the provisioned Prometheus datasource by uid."""
        datasources = yaml.safe_load(
            (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
        )["datasources"]
        uid = datasources[0]["uid"]
        used = {
            target["datasource"]["uid"]
            for panel in _panels(_load(path))
            for target in panel.get("targets", [])
        }
        assert {uid} == used

    @pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
    def test_metric_names_are_the_services(self, path: Path) -> None:
        """Panels use only the services' metric families (and process_* defaults)."""
        names = {
            name
            for panel in _panels(_load(path))
            for target in panel.get("targets", [])
            for name in METRIC.findall(target["expr"])
        }
        assert names
        assert [] == [n for n in sorted(names) if not n.startswith(KNOWN_PREFIXES)]

    def test_required_panels(self) -> None:
        """The panels the issue lists are there."""
        titles = " | ".join(
            panel["title"].lower() for path in DASHBOARDS for panel in _panels(_load(path))
        )
        wanted = [
            "target vs achieved", "processed rate per replica", "lag per partition (events)",
            "lag per partition (seconds)", "end-to-end latency", "outcomes", "dead letters",
            "rebalances", "commit latency", "alerts emitted", "cpu per replica",
            "memory per replica", "readings missing", "readings counted twice",
            "readings by state", "windows by kind", "audit: dead letters by reason",
            "last pass age",
        ]  # fmt: skip
        assert [] == [w for w in wanted if w not in titles]

    @pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
    def test_panels_do_not_overlap(self, path: Path) -> None:
        """No two top-level panels share a grid cell, and none is wider than the grid."""
        cells: dict[tuple[int, int], int] = {}
        clashes = []
        for panel in _load(path)["panels"]:
            pos = panel["gridPos"]
            if pos["x"] + pos["w"] > 24:
                clashes.append((panel["id"], "too wide"))
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    if (x, y) in cells:
                        clashes.append((panel["id"], cells[(x, y)]))
                    cells[(x, y)] = panel["id"]
        assert [] == sorted(set(clashes))

    @pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
    def test_audit_metrics_are_the_audits(self, path: Path) -> None:
        """Every sensorstream_audit_* a panel queries is a metric the audit exports."""
        used = {
            name
            for panel in _panels(_load(path))
            for target in panel.get("targets", [])
            for name in METRIC.findall(target["expr"])
            if name.startswith("sensorstream_audit_")
        }
        assert set() == used - _audit_metric_names()


class TestAuditRow:
    DASHBOARD = GRAFANA / "dashboards" / "sensorstream-overview.json"

    def test_row_queries_the_audit(self) -> None:
        """The Audit row's panels all read the audit's metrics, and it has them all but the
        ones about its own passes and sensor count."""
        panels = _row(_load(self.DASHBOARD), "Audit")
        used = {
            name
            for panel in panels
            for target in panel["targets"]
            for name in METRIC.findall(target["expr"])
        }
        unshown = {
            "sensorstream_audit_up",
            "sensorstream_audit_sensors",
            "sensorstream_audit_pass_duration_seconds",
            "sensorstream_audit_pass_records",
        }
        assert (True, _audit_metric_names() - unshown) == (bool(panels), used)

    @pytest.mark.parametrize("title", ["Readings missing", "Readings counted twice"])
    def test_loss_and_double_counting_turn_red_above_zero(self, title: str) -> None:
        """The two stats the audit exists for are green at 0 and red from 1 reading on."""
        panel = next(p for p in _row(_load(self.DASHBOARD), "Audit") if p["title"] == title)
        defaults = panel["fieldConfig"]["defaults"]
        steps = [(step["color"], step["value"]) for step in defaults["thresholds"]["steps"]]
        actual = (panel["type"], defaults["color"]["mode"], steps)
        assert ("stat", "thresholds", [("green", None), ("red", 1)]) == actual


class TestProvisioning:
    def test_dashboard_provider_points_at_the_dashboards(self) -> None:
        """The provider's path is where compose mounts deploy/grafana/dashboards."""
        provider = yaml.safe_load(
            (GRAFANA / "provisioning" / "dashboards" / "sensorstream.yml").read_text()
        )["providers"][0]
        mounts = _compose_mounts()
        assert "./deploy/grafana/dashboards" == mounts[provider["options"]["path"]]

    def test_provisioning_is_mounted(self) -> None:
        """Grafana reads deploy/grafana/provisioning."""
        assert "./deploy/grafana/provisioning" == _compose_mounts()["/etc/grafana/provisioning"]

    def test_datasource_is_the_compose_prometheus(self) -> None:
        """The datasource URL is the compose Prometheus service."""
        datasource = yaml.safe_load(
            (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
        )["datasources"][0]
        assert ("prometheus", "http://prometheus:9090") == (datasource["type"], datasource["url"])

    def test_home_dashboard_exists(self) -> None:
        """Grafana's home dashboard setting names a file that is mounted."""
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        home = compose["services"]["grafana"]["environment"][
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
        ]
        directory, name = home.rsplit("/", 1)
        assert (GRAFANA / "dashboards" / name).is_file()
        assert "./deploy/grafana/dashboards" == _compose_mounts()[directory]
