"""deploy/grafana's PostgreSQL dashboard: every panel's SQL runs against the real database.

The database is the one the real pipeline filled (``pipeline_run``). Grafana's macros are
expanded here the way its PostgreSQL datasource expands them (``$__timeFilter``,
``$__timeGroupAlias``, ``$__interval``, the ``$sensor`` variable); a macro this test does
not know fails the test rather than being sent to the database as it is.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sink_support import PipelineRun

REPO = Path(__file__).resolve().parents[3]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sensorstream-postgres.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "postgres.yml"
INTERVALS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target)
        for panel in _dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def expand(sql: str, *, start: datetime, end: datetime, sensors: list[str], interval: str) -> str:
    """``sql`` with Grafana's PostgreSQL macros and the dashboard's variables filled in."""
    lower, upper = (f"'{moment.isoformat()}'::timestamptz" for moment in (start, end))
    sql = sql.replace("$__interval", f"'{interval}'")
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN {lower} AND {upper}", sql)

    def time_group(match: re.Match[str]) -> str:
        column, width = match.group(1), match.group(2).strip().strip("'")
        seconds = int(width[:-1]) * INTERVALS[width[-1]]
        return (
            f'to_timestamp(floor(extract(epoch FROM {column}) / {seconds}) * {seconds}) AS "time"'
        )

    sql = re.sub(r"\$__timeGroupAlias\((\w+),\s*([^)]+)\)", time_group, sql)
    sql = sql.replace("$sensor", ", ".join(f"'{sensor}'" for sensor in sensors))
    left = re.findall(r"\$\w+", sql)
    assert [] == left, f"macros or variables this test does not expand: {left}"
    return sql


class TestDashboardFile:
    def test_every_panel_queries_the_provisioned_datasource(self) -> None:
        """Every panel and the sensor variable use the PostgreSQL datasource's uid."""
        datasource = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
        used = {target["datasource"]["uid"] for _, target in _targets()}
        variables = {var["datasource"]["uid"] for var in _dashboard()["templating"]["list"]}
        assert ({datasource["uid"]}, {datasource["uid"]}) == (used, variables)
        assert "grafana-postgresql-datasource" == datasource["type"]

    def test_required_panels(self) -> None:
        """Per-sensor temperature and humidity, the alerts table, the top alerting sensors."""
        titles = {panel["title"].lower(): panel["type"] for panel in _dashboard()["panels"]}
        wanted = {
            "temperature per sensor": "timeseries",
            "humidity per sensor": "timeseries",
            "alerts": "table",
            "top sensors by alert count": "bargauge",
        }
        assert wanted == {title: titles.get(title) for title in wanted}

    def test_sensor_variable(self) -> None:
        """A multi-value ``sensor`` variable (with All) filters the per-sensor panels."""
        variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "sensor")
        assert (True, True) == (variable["multi"], variable["includeAll"])
        per_sensor = [t["rawSql"] for title, t in _targets() if "per sensor" in title.lower()]
        assert per_sensor
        assert all("sensor_id IN ($sensor)" in sql for sql in per_sensor)

    def test_unique_ids_and_no_overlap(self) -> None:
        """Panel ids are unique, and no two panels share a grid cell."""
        panels = _dashboard()["panels"]
        cells: dict[tuple[int, int], int] = {}
        clashes = []
        for panel in panels:
            pos = panel["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    if (x, y) in cells or x >= 24:
                        clashes.append(panel["id"])
                    cells[x, y] = panel["id"]
        ids = [panel["id"] for panel in panels]
        assert (len(ids), []) == (len(set(ids)), clashes)


class TestPanelsOnThePipelinesData:
    @pytest.fixture
    async def window(self, pipeline_run: PipelineRun) -> tuple[datetime, datetime, list[str]]:
        """The time range around the run's data, and the sensors the variable offers."""
        db = pipeline_run.db
        first = await db.fetchval("SELECT min(window_start) FROM aggregates")
        start, end = first - timedelta(hours=1), datetime.now(UTC) + timedelta(minutes=5)
        variable = _dashboard()["templating"]["list"][0]
        sql = expand(variable["query"], start=start, end=end, sensors=[], interval="1s")
        sensors = [row[0] for row in await db.fetch(sql)]
        return start, end, sensors

    async def test_sensor_variable_offers_every_sensor(
        self, pipeline_run: PipelineRun, window: tuple[datetime, datetime, list[str]]
    ) -> None:
        """The variable's query lists every sensor the pipeline stored."""
        expected = [f"sensor-{i:04d}" for i in range(pipeline_run.sensors)]
        assert expected == window[2]

    @pytest.mark.parametrize(("title", "target"), _targets(), ids=[t for t, _ in _targets()])
    async def test_panel_sql_returns_rows(
        self,
        pipeline_run: PipelineRun,
        window: tuple[datetime, datetime, list[str]],
        title: str,
        target: dict[str, Any],
    ) -> None:
        """Each panel's SQL, for all sensors, runs and returns rows; a time series has a
        ``time`` column."""
        start, end, sensors = window
        sql = expand(target["rawSql"], start=start, end=end, sensors=sensors, interval="1s")
        rows = await pipeline_run.db.fetch(sql)
        assert rows, f"{title}: no rows for {sql}"
        if target["format"] == "time_series":
            assert "time" in dict(rows[0])

    async def test_one_sensor_selected_shows_only_it(
        self, pipeline_run: PipelineRun, window: tuple[datetime, datetime, list[str]]
    ) -> None:
        """With one sensor selected, the temperature panel's series are that sensor's only,
        its readings weighted means of what the pipeline produced (20..26 °C)."""
        start, end, sensors = window
        target = next(t for title, t in _targets() if title == "Temperature per sensor")
        sql = expand(target["rawSql"], start=start, end=end, sensors=sensors[:1], interval="1s")
        rows = await pipeline_run.db.fetch(sql)
        assert {sensors[0]} == {row["metric"] for row in rows}
        assert all(20.0 <= row["temperature"] <= 26.0 for row in rows)
