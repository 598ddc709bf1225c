"""deploy/prometheus: promtool accepts the config and rules, and every rule is unit-tested."""

from __future__ import annotations

from typing import Any

import yaml
from deploy_helpers import REPO, run_tool

from sensorstream.audit.settings import AuditSettings

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "sensorstream.rules.yml"
EXPECTED_ALERTS = {
    "SensorstreamProcessorDown",
    "SensorstreamConsumerLagHigh",
    "SensorstreamConsumerLagGrowing",
    "SensorstreamDeadLetterRateHigh",
    "SensorstreamProducerBehindSchedule",
    "SensorstreamNoEventsProcessed",
    "SensorstreamCommitFailures",
    "SensorstreamReadingsMissing",
    "SensorstreamReadingsCountedTwice",
    "SensorstreamAuditDown",
}


def _all_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _rules() -> list[dict[str, Any]]:
    """The alerting rules (the recording rules of the scaling signal have no alert)."""
    return [rule for rule in _all_rules() if "alert" in rule]


class TestPromtool:
    def test_check_config(self) -> None:
        """promtool check config accepts the compose Prometheus config (and its rule file)."""
        result = run_tool("promtool", "check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
        assert 0 == result.returncode, result.stdout + result.stderr

    def test_check_secure_config(self) -> None:
        """promtool check config accepts the authenticated, HTTPS variant of the config."""
        result = run_tool(
            "promtool", "check", "config", "prometheus-secure.yml", cwd=PROMETHEUS_DIR
        )
        assert 0 == result.returncode, result.stdout + result.stderr

    def test_check_rules(self) -> None:
        """promtool check rules accepts the alert rules."""
        result = run_tool("promtool", "check", "rules", str(RULES))
        assert 0 == result.returncode, result.stdout + result.stderr

    def test_unit_tests_pass(self) -> None:
        """promtool test rules: every alert fires on its condition and stays quiet otherwise."""
        result = run_tool("promtool", "test", "rules", "tests.yml", cwd=PROMETHEUS_DIR)
        assert 0 == result.returncode, result.stdout + result.stderr


class TestRules:
    def test_the_alerts_the_issue_asks_for(self) -> None:
        """Processor down, lag high and growing, DLQ rate, producer behind, idle, commits,
        and the audit's readings missing or counted twice."""
        assert EXPECTED_ALERTS == {rule["alert"] for rule in _rules()}

    def test_every_alert_has_a_unit_test(self) -> None:
        """Each alert appears in at least one firing expectation of tests.yml."""
        tests = yaml.safe_load((PROMETHEUS_DIR / "tests.yml").read_text())["tests"]
        firing = {
            case["alertname"]
            for test in tests
            for case in test.get("alert_rule_test", [])
            if case["exp_alerts"]
        }
        assert EXPECTED_ALERTS == firing

    def test_every_alert_has_a_quiet_case(self) -> None:
        """Each alert is also shown not firing (pending, recovered, or healthy) in tests.yml."""
        tests = yaml.safe_load((PROMETHEUS_DIR / "tests.yml").read_text())["tests"]
        quiet = {
            case["alertname"]
            for test in tests
            for case in test.get("alert_rule_test", [])
            if not case["exp_alerts"]
        }
        assert EXPECTED_ALERTS == quiet

    def test_every_alert_has_a_runbook(self) -> None:
        """Each alert links to a runbook section that exists in docs/operations.md."""
        docs = (REPO / "docs" / "operations.md").read_text().lower()
        missing = [
            rule["alert"]
            for rule in _rules()
            if rule["annotations"]["runbook"] != f"docs/operations.md#{rule['alert'].lower()}"
            or f"### {rule['alert'].lower()}\n" not in docs
        ]
        assert [] == missing

    def test_severity_and_for(self) -> None:
        """Every alert has a severity and waits before firing (no flapping on one scrape)."""
        incomplete = [
            rule["alert"]
            for rule in _rules()
            if rule["labels"].get("severity") not in ("warning", "critical") or not rule.get("for")
        ]
        assert [] == incomplete


class TestScrapeConfig:
    def test_compose_scrapes_the_audit_on_its_metrics_port(self) -> None:
        """Job sensorstream-audit scrapes the compose service `audit` on the port the audit
        listens on by default (its settings' metrics_port)."""
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        sd = jobs["sensorstream-audit"]["dns_sd_configs"][0]
        default_port = AuditSettings.model_fields["metrics_port"].default
        assert (["audit"], default_port) == (sd["names"], sd["port"])


class TestSecureScrapeConfig:
    def test_same_jobs_and_targets_as_the_compose_config(self) -> None:
        """prometheus-secure.yml scrapes the same jobs, services and ports as prometheus.yml."""

        def jobs(name: str) -> dict[str, Any]:
            config = yaml.safe_load((PROMETHEUS_DIR / name).read_text())
            return {
                job["job_name"]: job.get("dns_sd_configs") or job.get("static_configs")
                for job in config["scrape_configs"]
            }

        assert jobs("prometheus.yml") == jobs("prometheus-secure.yml")

    def test_every_service_job_is_https_with_basic_auth(self) -> None:
        """Each sensorstream job uses HTTPS against the secrets' CA, checks the certificate
        for the compose service's name, and sends the secrets' password."""
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-secure.yml").read_text())
        actual = {
            job["job_name"]: (
                job.get("scheme"),
                job.get("basic_auth"),
                job.get("tls_config"),
            )
            for job in config["scrape_configs"]
            if job["job_name"].startswith("sensorstream-")
        }
        expected = {
            f"sensorstream-{service}": (
                "https",
                {"username": "prometheus", "password_file": "/run/secrets/metrics_password"},
                {"ca_file": "/run/secrets/ca.pem", "server_name": service},
            )
            for service in ("producer", "processor", "audit", "bridge", "sink")
        }
        assert expected == actual


class TestScalingSignal:
    """The recording rule the Helm chart's HPA scales on (docs/capacity.md)."""

    RECOMMENDED = "sensorstream:processor_recommended_replicas"

    def test_the_recording_rule_exists_under_the_helm_charts_name(self) -> None:
        """Exactly one rule records sensorstream:processor_recommended_replicas, and the
        chart's values name that metric."""
        recorded = [rule["record"] for rule in _all_rules() if "record" in rule]
        values = yaml.safe_load((REPO / "deploy/helm/sensorstream/values.yaml").read_text())
        hpa = values["processor"]["autoscaling"]["hpa"]
        assert (1, self.RECOMMENDED) == (recorded.count(self.RECOMMENDED), hpa["metricName"])

    def test_every_recording_rule_is_evaluated_in_a_test(self) -> None:
        """Each recorded series is the expression of a promql_expr_test in tests.yml."""
        tests = yaml.safe_load((PROMETHEUS_DIR / "tests.yml").read_text())["tests"]
        evaluated = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
        recorded = {rule["record"] for rule in _all_rules() if "record" in rule}
        assert set() == recorded - evaluated

    def test_recommended_replicas_is_tested_at_1_3_and_the_partition_clamp(self) -> None:
        """tests.yml expects the recommendation to be 1, 3, and the partition count (4) in
        a case whose unclamped answer is higher."""
        tests = yaml.safe_load((PROMETHEUS_DIR / "tests.yml").read_text())["tests"]
        expected = {
            (test["name"], sample["value"])
            for test in tests
            for case in test.get("promql_expr_test", [])
            if case["expr"] == self.RECOMMENDED
            for sample in case["exp_samples"]
        }
        values = {value for _, value in expected}
        clamped = {name for name, value in expected if "clamped at the partition count" in name}
        assert ({1, 3, 4} <= values, 1) == (True, len(clamped))
