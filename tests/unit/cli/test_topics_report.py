"""``sensorstream topics``' reports, verdict and options, without a broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sensorstream.cli.__main__ import app
from sensorstream.cli._topics import (
    TopicReport,
    command_of,
    configured_topology,
    exit_status,
    missing_report,
    render_json,
    render_text,
    report_of,
)
from sensorstream.runtime.topics import TopicsSettings, TopicState
from sensorstream.schema import TOPOLOGY

BOOTSTRAP = "kafka:9092"
RETENTION = (
    "sensor-data has retention.ms=3600000, 604800000 declared: kafka-configs.sh "
    "--bootstrap-server kafka:9092 --alter --entity-type topics --entity-name sensor-data "
    "--add-config retention.ms=604800000"
)
REPLICATION = (
    "sensor-data has replication factor 1, 3 declared; change it with kafka-reassign-partitions.sh"
)


def clean(name: str, role: str = "input", **changes: Any) -> TopicReport:
    """An existing topic's report with six partitions, replication 1, and ``changes``."""
    return TopicReport(
        role=role, name=name, exists=True, partitions=6, replication_factor=1, **changes
    )


class TestReports:
    def test_a_checked_topic_keeps_what_ensure_topics_said(self) -> None:
        state = TopicState(
            spec=TOPOLOGY.dlq,
            created=False,
            partitions=6,
            replication_factor=1,
            configs={"max.message.bytes": "4194304"},
            fixed={"max.message.bytes": "4194304"},
            findings=[RETENTION],
        )
        assert TopicReport(
            role="dlq",
            name="sensor-data.dlq",
            exists=True,
            created=False,
            partitions=6,
            replication_factor=1,
            configs={"max.message.bytes": "4194304"},
            fixed={"max.message.bytes": "4194304"},
            findings=(RETENTION,),
        ) == report_of(state)

    def test_a_missing_topic_says_how_to_create_it_as_declared(self) -> None:
        """The kafka-topics.sh command carries the layout and every creation config."""
        spec = TOPOLOGY.configured(partitions=3, names={"dlq": "my.dlq"}).dlq
        report = missing_report(spec, BOOTSTRAP)
        [finding] = report.findings
        assert (False, False) == (report.exists, report.as_declared)
        assert (
            "kafka-topics.sh --bootstrap-server kafka:9092 --create --topic my.dlq "
            "--partitions 3 --replication-factor 1 --config min.insync.replicas=1 "
            "--config retention.ms=1209600000 --config max.message.bytes=4194304"
        ) == command_of(finding)
        assert "sensorstream topics apply" in finding

    def test_only_an_existing_topic_without_findings_is_as_declared(self) -> None:
        assert (True, False) == (
            clean("a").as_declared,
            clean("a", findings=(RETENTION,)).as_declared,
        )


class TestCommandOf:
    def test_the_command_is_the_findings_tail(self) -> None:
        assert RETENTION.split(": ", 1)[1] == command_of(RETENTION)

    def test_a_finding_naming_only_a_tool_gives_the_tool(self) -> None:
        assert "kafka-reassign-partitions.sh" == command_of(REPLICATION)

    def test_a_finding_without_a_command_gives_none(self) -> None:
        assert None is command_of("something is odd")


class TestVerdict:
    def test_all_as_declared_exits_0(self) -> None:
        assert 0 == exit_status([clean("a"), clean("b", created=True)])

    @pytest.mark.parametrize(
        "report",
        [
            clean("b", findings=(RETENTION,)),
            missing_report(TOPOLOGY.alerts, BOOTSTRAP),
        ],
    )
    def test_one_differing_or_missing_topic_exits_1(self, report: TopicReport) -> None:
        assert 1 == exit_status([clean("a"), report])


class TestRendering:
    def test_text_has_a_line_per_topic_its_findings_and_the_verdict(self) -> None:
        reports = [
            clean("sensor-data", findings=(RETENTION,)),
            clean("sensor-aggregates", "aggregates", created=True),
            missing_report(TOPOLOGY.alerts, BOOTSTRAP),
            clean("sensor-data.dlq", "dlq", fixed={"max.message.bytes": "4194304"}),
        ]
        lines = render_text(reports).splitlines()
        assert [
            "sensor-data (input): differs, 6 partitions, replication 1",
            f"  differs: {RETENTION}",
            "sensor-aggregates (aggregates): created, as declared, 6 partitions, replication 1",
            "sensor-alerts (alerts): missing",
            f"  differs: {reports[2].findings[0]}",
            "sensor-data.dlq (dlq): raised max.message.bytes to 4194304, as declared, "
            "6 partitions, replication 1",
            "2 of 4 topics differ from the declaration",
        ] == lines

    def test_text_of_a_clean_cluster_says_so(self) -> None:
        assert render_text([clean("a"), clean("b")]).endswith("all 2 topics as declared")

    def test_json_has_each_finding_with_its_command(self) -> None:
        document = json.loads(render_json([clean("sensor-data", findings=(RETENTION,))]))
        assert {
            "ok": False,
            "topics": [
                {
                    "role": "input",
                    "name": "sensor-data",
                    "exists": True,
                    "created": False,
                    "partitions": 6,
                    "replication_factor": 1,
                    "configs": {},
                    "fixed": {},
                    "findings": [{"message": RETENTION, "command": command_of(RETENTION)}],
                }
            ],
        } == document


class TestOptions:
    def test_no_options_is_sensorstream_topics_topology(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same defaults as sensorstream-topics: its settings' own topology."""
        monkeypatch.delenv("SENSORSTREAM_TOPIC", raising=False)
        monkeypatch.delenv("SENSORSTREAM_PARTITIONS", raising=False)
        assert TopicsSettings().topology() == configured_topology() == TOPOLOGY

    def test_options_rename_and_relayout(self) -> None:
        topology = configured_topology(partitions=2, topic="in", dlq_topic="dead")
        assert [("in", 2), ("sensor-aggregates", 2), ("sensor-alerts", 2), ("dead", 2)] == [
            (spec.name, spec.partitions) for spec in topology
        ]

    def test_the_variables_of_sensorstream_topics_apply(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SENSORSTREAM_TOPIC / _PARTITIONS, as for the services; an option beats them."""
        monkeypatch.setenv("SENSORSTREAM_TOPIC", "from-env")
        monkeypatch.setenv("SENSORSTREAM_PARTITIONS", "4")
        assert ("from-env", 4) == (
            configured_topology().input.name,
            configured_topology().input.partitions,
        )
        assert "from-option" == configured_topology(topic="from-option").input.name

    def test_a_bad_value_exits_2_naming_option_and_variable(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(typer.Exit) as exited:
            configured_topology(partitions=0)
        assert 2 == exited.value.exit_code
        assert "--partitions / SENSORSTREAM_PARTITIONS" in capsys.readouterr().err

    def test_check_refuses_a_bad_topic_name_before_connecting(self) -> None:
        result = CliRunner().invoke(app, ["topics", "check", "--topic", "a b"])
        assert 2 == result.exit_code
