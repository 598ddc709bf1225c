"""docker-compose.yml: valid for compose 1.29, scale-safe, hardened, settings that exist."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, run_tool
from pydantic_settings import BaseSettings

from sensorstream.audit.settings import AuditSettings
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime.topics import TopicsSettings
from sensorstream.schema import TOPOLOGY

SETTINGS: dict[str, type[BaseSettings]] = {
    "producer": ProducerSettings,
    "processor": ProcessorSettings,
    "init-topics": TopicsSettings,
    "audit": AuditSettings,
}
HARDENED = ("producer", "processor", "prometheus", "grafana", "init-topics", "audit")


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, defaults filled)."""
    result = run_tool("docker-compose", "-f", "docker-compose.yml", "config")
    assert 0 == result.returncode, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


class TestValidity:
    def test_config_quiet_passes(self) -> None:
        """docker-compose 1.29 validates the file without an engine."""
        result = run_tool("docker-compose", "-f", "docker-compose.yml", "config", "-q")
        assert (0, "") == (result.returncode, result.stderr.strip())

    def test_env_example_is_accepted(self) -> None:
        """.env.example is a valid env file for the compose file."""
        result = run_tool(
            "docker-compose",
            "--env-file",
            ".env.example",
            "-f",
            "docker-compose.yml",
            "config",
            "-q",
        )
        assert (0, "") == (result.returncode, result.stderr.strip())

    def test_services(self, resolved: dict[str, Any]) -> None:
        """The stack has the services the docs describe."""
        expected = {
            "kafka",
            "init-topics",
            "producer",
            "processor",
            "audit",
            "prometheus",
            "grafana",
        }
        assert expected == set(resolved["services"])


class TestSettings:
    @pytest.mark.parametrize("name", sorted(SETTINGS))
    def test_every_sensorstream_variable_is_a_setting(
        self, resolved: dict[str, Any], name: str
    ) -> None:
        """Every SENSORSTREAM_* the compose file sets is a field of the service's settings."""
        env = _environment(resolved["services"][name])
        fields = {f"SENSORSTREAM_{field.upper()}" for field in SETTINGS[name].model_fields}
        set_here = {key for key in env if key.startswith("SENSORSTREAM_")}
        assert set_here
        assert set() == set_here - fields

    @pytest.mark.parametrize("name", sorted(SETTINGS))
    def test_compose_values_validate(self, resolved: dict[str, Any], name: str) -> None:
        """The values the compose file sets (with defaults) load into the settings model."""
        env = _environment(resolved["services"][name])
        values = {
            key.removeprefix("SENSORSTREAM_").lower(): value
            for key, value in env.items()
            if key.startswith("SENSORSTREAM_")
        }
        settings = SETTINGS[name].model_validate(values)
        assert "kafka:9092" == settings.bootstrap_servers  # type: ignore[attr-defined]

    def test_dockerfile_env_is_settings(self) -> None:
        """The SENSORSTREAM_* defaults baked into the images are real settings too (the
        processor image's also of the audit, which runs from it)."""
        for name, image in (
            ("producer", "producer"),
            ("processor", "processor"),
            ("audit", "processor"),
        ):
            cls = SETTINGS[name]
            dockerfile = (REPO / "services" / image / "Dockerfile").read_text()
            baked = set(re.findall(r"\b(SENSORSTREAM_[A-Z_]+)=", dockerfile))
            fields = {f"SENSORSTREAM_{field.upper()}" for field in cls.model_fields}
            assert set() == baked - fields, name


class TestScaling:
    def test_processor_is_scale_safe(self, resolved: dict[str, Any]) -> None:
        """No container_name and no host ports on the processor, so --scale works."""
        processor = resolved["services"]["processor"]
        assert (None, None) == (processor.get("container_name"), processor.get("ports"))

    def test_no_service_has_a_container_name(self, resolved: dict[str, Any]) -> None:
        """No service pins its container name (names would clash on scale or a second project)."""
        named = [n for n, s in resolved["services"].items() if "container_name" in s]
        assert [] == named

    def test_two_processor_replicas_by_default(self, resolved: dict[str, Any]) -> None:
        """Two processor replicas start by default."""
        assert 2 == resolved["services"]["processor"]["deploy"]["replicas"]

    def test_published_ports_are_loopback_only(self, resolved: dict[str, Any]) -> None:
        """Whatever is published listens on 127.0.0.1 only."""
        published = [
            port for service in resolved["services"].values() for port in service.get("ports", [])
        ]
        assert published
        assert all(str(port).startswith("127.0.0.1:") for port in published)


class TestHardening:
    @pytest.mark.parametrize("name", HARDENED)
    def test_hardened(self, resolved: dict[str, Any], name: str) -> None:
        """Read-only root, no capabilities, no privilege gain, an init, /tmp as tmpfs."""
        service = resolved["services"][name]
        actual = (
            service.get("read_only"),
            service.get("cap_drop"),
            service.get("security_opt"),
            service.get("init"),
            service.get("tmpfs"),
        )
        assert (True, ["ALL"], ["no-new-privileges:true"], True, ["/tmp"]) == actual

    def test_kafka_drops_capabilities(self, resolved: dict[str, Any]) -> None:
        """Kafka (whose image writes its config at start) still drops every capability."""
        kafka = resolved["services"]["kafka"]
        assert (["ALL"], ["no-new-privileges:true"]) == (kafka["cap_drop"], kafka["security_opt"])

    def test_every_service_has_a_memory_limit(self, resolved: dict[str, Any]) -> None:
        """Every service has a memory limit."""
        unlimited = [
            name
            for name, service in resolved["services"].items()
            if not service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        ]
        assert [] == unlimited


class TestKafka:
    def test_image_matches_local_broker_version(self, resolved: dict[str, Any]) -> None:
        """The compose Kafka is the same release as the local broker (deploy/kafka/pom.xml)."""
        pom = (REPO / "deploy" / "kafka" / "pom.xml").read_text()
        version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
        assert version is not None
        assert f"apache/kafka:{version.group(1)}" == resolved["services"]["kafka"]["image"]

    def test_kraft_single_node(self, resolved: dict[str, Any]) -> None:
        """KRaft combined node with replication factors 1, a healthcheck and a named volume."""
        kafka = resolved["services"]["kafka"]
        env = _environment(kafka)
        actual = (
            env["KAFKA_PROCESS_ROLES"],
            env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"],
            env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"],
            "CLUSTER_ID" in env,
            "healthcheck" in kafka,
            kafka["volumes"][0].split(":")[0]
            if isinstance(kafka["volumes"][0], str)
            else kafka["volumes"][0]["source"],
        )
        assert ("broker,controller", "1", "1", True, True, "kafka-data") == actual

    def test_init_creates_the_declared_topology(self, resolved: dict[str, Any]) -> None:
        """The one-shot init runs sensorstream-topics, which creates and checks the topics of
        the one declaration, with the partitions every other service is told."""
        init = resolved["services"]["init-topics"]
        settings = TopicsSettings.model_validate(
            {
                key.removeprefix("SENSORSTREAM_").lower(): value
                for key, value in _environment(init).items()
                if key.startswith("SENSORSTREAM_")
            }
        )
        partitions = {
            _environment(resolved["services"]["producer"])["SENSORSTREAM_PARTITIONS"],
            _environment(resolved["services"]["processor"])["SENSORSTREAM_OUTPUT_PARTITIONS"],
            str(settings.partitions),
        }
        assert ["/app/.venv/bin/sensorstream-topics"] == init["entrypoint"]
        assert [spec.name for spec in TOPOLOGY] == [spec.name for spec in settings.topology()]
        assert 1 == len(partitions)

    def test_services_wait_for_topics(self, resolved: dict[str, Any]) -> None:
        """Producer, processor and audit start after init-topics completed."""
        conditions = [
            resolved["services"][name]["depends_on"]["init-topics"]["condition"]
            for name in ("producer", "processor", "audit")
        ]
        assert ["service_completed_successfully"] * 3 == conditions


class TestAudit:
    def test_runs_the_audit_from_the_processor_image(self, resolved: dict[str, Any]) -> None:
        """The audit service runs `sensorstream-audit --follow` from the processor image."""
        audit = resolved["services"]["audit"]
        processor = resolved["services"]["processor"]
        actual = (audit["image"], audit["entrypoint"], audit["command"], audit["build"])
        expected = (
            processor["image"],
            ["/app/.venv/bin/sensorstream-audit"],
            ["--follow"],
            processor["build"],
        )
        assert expected == actual

    def test_prometheus_scrapes_the_port_it_listens_on(self, resolved: dict[str, Any]) -> None:
        """The audit listens on all interfaces, on the port Prometheus' audit job scrapes (the
        image's SENSORSTREAM_METRICS_PORT is the processor's, so compose must set it)."""
        settings = AuditSettings.model_validate(
            {
                key.removeprefix("SENSORSTREAM_").lower(): value
                for key, value in _environment(resolved["services"]["audit"]).items()
                if key.startswith("SENSORSTREAM_")
            }
        )
        prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
        job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "sensorstream-audit")
        sd = job["dns_sd_configs"][0]
        assert (["audit"], "0.0.0.0", sd["port"]) == (
            sd["names"],
            settings.metrics_host,
            settings.metrics_port,
        )

    def test_audit_publishes_no_port_and_runs_once(self, resolved: dict[str, Any]) -> None:
        """One audit, reached by Prometheus over the compose network only."""
        audit = resolved["services"]["audit"]
        replicas = audit.get("deploy", {}).get("replicas", 1)
        assert (None, 1) == (audit.get("ports"), replicas)
