"""docker-compose.yml: valid for compose 1.29, scale-safe, hardened, settings that exist."""

from __future__ import annotations

import asyncio
import importlib
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, run_tool
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from sensorstream.audit.settings import AuditSettings
from sensorstream.bridge._devices import DeviceGateway
from sensorstream.bridge.settings import BridgeSettings, DevicesSettings
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.producer._service import ProducerService
from sensorstream.producer._simulation import sensor_ids
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import StopSignal
from sensorstream.runtime.topics import TopicsSettings
from sensorstream.schema import TOPOLOGY
from sensorstream.sink.settings import SinkSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "producer": ProducerSettings,
    "processor": ProcessorSettings,
    "init-topics": TopicsSettings,
    "audit": AuditSettings,
    "bridge": BridgeSettings,
    "devices": DevicesSettings,
    "sink": SinkSettings,
}
# The services that talk to Kafka (the devices only publish over MQTT).
KAFKA_CLIENTS = sorted(set(SETTINGS) - {"devices"})
# Each service and the Dockerfile of the image it runs.
DOCKERFILES = {
    "producer": "services/producer/Dockerfile",
    "processor": "services/processor/Dockerfile",
    "audit": "services/processor/Dockerfile",
    "init-topics": "services/processor/Dockerfile",
    "bridge": "services/bridge/Dockerfile",
    "devices": "services/bridge/Dockerfile",
    "sink": "services/sink/Dockerfile",
}
# The services with a /metrics endpoint and the Prometheus job that scrapes it.
SCRAPED = {
    "producer": "sensorstream-producer",
    "processor": "sensorstream-processor",
    "audit": "sensorstream-audit",
    "bridge": "sensorstream-bridge",
    "sink": "sensorstream-sink",
}
HARDENED = (
    "producer",
    "processor",
    "prometheus",
    "grafana",
    "init-topics",
    "audit",
    "mosquitto",
    "postgres",
    "bridge",
    "devices",
    "sink",
)
ALLOWED_CONDITIONS = {"service_started", "service_completed_successfully"}
MOSQUITTO_DIR = REPO / "deploy" / "compose" / "mosquitto"
POSTGRES_DIR = REPO / "deploy" / "compose" / "postgres"


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


def _settings(resolved: dict[str, Any], name: str) -> Any:
    """Service ``name``'s settings from the SENSORSTREAM_* its image bakes in and compose
    sets (compose's win), as the container would load them."""
    dockerfile = (REPO / DOCKERFILES[name]).read_text()
    values = {
        key.lower(): value
        for key, value in re.findall(r"\bSENSORSTREAM_([A-Z_]+)=(\S+)", dockerfile)
    }
    values.update(
        {
            key.removeprefix("SENSORSTREAM_").lower(): value
            for key, value in _environment(resolved["services"][name]).items()
            if key.startswith("SENSORSTREAM_")
        }
    )
    return SETTINGS[name].model_validate(values)


def _mount_source(resolved: dict[str, Any], name: str, target: str) -> str | None:
    """What is mounted at ``target`` in service ``name`` (a host path or a volume name)."""
    for volume in resolved["services"][name].get("volumes", []):
        if isinstance(volume, dict):
            source, at = str(volume["source"]), str(volume["target"])
        else:
            source, at = volume.split(":")[:2]
        if at == target:
            return source
    return None


def _config_file(path: Path) -> dict[str, list[str]]:
    """A mosquitto.conf as {option: [values, ...]}."""
    options: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            options.setdefault(key, []).append(value.strip())
    return options


def _mosquittoctl() -> Any:
    """deploy/mqtt/mosquittoctl.py, the local broker (standard library only)."""
    if str(REPO / "deploy" / "mqtt") not in sys.path:
        sys.path.insert(0, str(REPO / "deploy" / "mqtt"))
    return importlib.import_module("mosquittoctl")


def _prometheus_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


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
            "mosquitto",
            "postgres",
            "bridge",
            "devices",
            "sink",
            "prometheus",
            "grafana",
        }
        assert expected == set(resolved["services"])

    def test_every_variable_is_in_env_example(self) -> None:
        """Every ${KNOB} the compose file reads is documented in .env.example."""
        compose = (REPO / "docker-compose.yml").read_text()
        used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", compose))
        example = (REPO / ".env.example").read_text()
        documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
        assert used
        assert set() == used - documented


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

    @pytest.mark.parametrize("name", KAFKA_CLIENTS)
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

    @pytest.mark.parametrize("name", sorted(SETTINGS))
    def test_dockerfile_env_is_settings(self, name: str) -> None:
        """The SENSORSTREAM_* defaults baked into the images are real settings too, of every
        service that runs the image (the processor image's also of the audit and
        init-topics, the bridge image's also of the devices)."""
        dockerfile = (REPO / DOCKERFILES[name]).read_text()
        baked = set(re.findall(r"\b(SENSORSTREAM_[A-Z_]+)=", dockerfile))
        fields = {f"SENSORSTREAM_{field.upper()}" for field in SETTINGS[name].model_fields}
        assert set() == baked - fields

    @pytest.mark.parametrize("name", KAFKA_CLIENTS)
    def test_kafka_is_retried_at_start_up(self, resolved: dict[str, Any], name: str) -> None:
        """Each Kafka client is told to retry the broker for two minutes at start-up: the
        broker may still be starting (podman enforces no healthcheck condition)."""
        assert 120 == _settings(resolved, name).startup_timeout


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
            service.get("cap_add"),
            service.get("privileged"),
            service.get("security_opt"),
            service.get("init"),
            "/tmp" in service.get("tmpfs", []),
        )
        assert (True, ["ALL"], None, None, ["no-new-privileges:true"], True, True) == actual

    @pytest.mark.parametrize("name", ["mosquitto", "postgres"])
    def test_brokers_run_as_their_image_user(self, resolved: dict[str, Any], name: str) -> None:
        """Mosquitto and PostgreSQL start as their images' unprivileged user (their official
        images would start as root and step down, which needs capabilities compose drops),
        and the stand-in image runs as that same user."""
        user = str(resolved["services"][name].get("user", ""))
        dockerfile = (REPO / "deploy" / "compose" / name / "Dockerfile").read_text()
        baked = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
        assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), user
        assert [user] == baked

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
            _environment(resolved["services"]["bridge"])["SENSORSTREAM_PARTITIONS"],
            str(settings.partitions),
        }
        assert ["/app/.venv/bin/sensorstream-topics"] == init["entrypoint"]
        assert [spec.name for spec in TOPOLOGY] == [spec.name for spec in settings.topology()]
        assert 1 == len(partitions)

    def test_services_wait_for_topics(self, resolved: dict[str, Any]) -> None:
        """Producer, processor, audit, bridge and sink start after init-topics completed."""
        waiting = ("producer", "processor", "audit", "bridge", "sink")
        conditions = [
            resolved["services"][name]["depends_on"]["init-topics"]["condition"] for name in waiting
        ]
        assert ["service_completed_successfully"] * len(waiting) == conditions

    def test_kafka_clients_stop_before_kafka(self, resolved: dict[str, Any]) -> None:
        """Every Kafka client depends on kafka itself (started), not only through the
        one-shot init-topics: compose stops a service after its dependents, so Kafka is
        still there while they shut down, and `stop` ends them all with exit 0."""
        missing = [
            name
            for name in KAFKA_CLIENTS
            if name != "init-topics"
            and (resolved["services"][name].get("depends_on") or {})
            .get("kafka", {})
            .get("condition")
            != "service_started"
        ]
        assert [] == missing

    def test_no_condition_podman_never_meets(self, resolved: dict[str, Any]) -> None:
        """No depends_on waits for service_healthy: podman runs no healthchecks, so
        docker-compose would wait for ever."""
        conditions = {
            spec["condition"]
            for service in resolved["services"].values()
            for spec in (service.get("depends_on") or {}).values()
        }
        assert set() == conditions - ALLOWED_CONDITIONS


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


class TestPrometheusJobs:
    @pytest.mark.parametrize("name", sorted(SCRAPED))
    def test_job_scrapes_the_port_the_service_listens_on(
        self, resolved: dict[str, Any], name: str
    ) -> None:
        """Each service's job finds its replicas through Docker DNS (type A on the service
        name, so --scale needs no change) on the port the service listens on, as its image
        and the compose file set it, on every interface."""
        settings = _settings(resolved, name)
        job = _prometheus_jobs()[SCRAPED[name]]
        sd = job["dns_sd_configs"][0]
        actual = (sd["names"], sd["type"], sd["port"], settings.metrics_host)
        assert ([name], "A", settings.metrics_port, "0.0.0.0") == actual

    def test_every_job_is_a_service(self, resolved: dict[str, Any]) -> None:
        """Each DNS-discovered job names a service of the stack (no job for a service
        that is gone or renamed)."""
        names = {
            name
            for job in _prometheus_jobs().values()
            for sd in job.get("dns_sd_configs", [])
            for name in sd["names"]
        }
        assert set() == names - set(resolved["services"])

    def test_ports_do_not_clash(self, resolved: dict[str, Any]) -> None:
        """Bridge 8003 and sink 8004 beside producer 8000, processor 8001 and audit 8002."""
        ports = {name: _settings(resolved, name).metrics_port for name in SCRAPED}
        assert {"bridge": 8003, "sink": 8004} == {n: ports[n] for n in ("bridge", "sink")}
        assert len(set(ports.values())) == len(ports)


class TestMosquitto:
    def test_image_is_pinned(self, resolved: dict[str, Any]) -> None:
        """eclipse-mosquitto at a pinned 2.x release by default, not `latest`."""
        image = resolved["services"]["mosquitto"]["image"]
        assert re.fullmatch(r"eclipse-mosquitto:2\.\d+\.\d+", image), image

    def test_config_is_the_mounted_file(self, resolved: dict[str, Any]) -> None:
        """deploy/compose/mosquitto/config is mounted read-only where the image's command
        reads mosquitto.conf (the stand-in's CMD names the same path)."""
        source = _mount_source(resolved, "mosquitto", "/mosquitto/config")
        dockerfile = (MOSQUITTO_DIR / "Dockerfile").read_text()
        cmd = re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE)
        assert cmd is not None
        volumes = [str(v) for v in resolved["services"]["mosquitto"]["volumes"]]
        assert str(MOSQUITTO_DIR / "config") == source
        assert any(v.startswith(f"{source}:/mosquitto/config:ro") for v in volumes)
        assert "/mosquitto/config/mosquitto.conf" in cmd.group(1)

    def test_queues_like_the_local_broker(self) -> None:
        """max_queued_messages is the local broker's (mosquittoctl: a million, far above
        Mosquitto's 1,000, which drops the rest), with no byte limit and no in-flight cap,
        so a bridge restart drops no queued QoS 1 message."""
        ctl = _mosquittoctl()
        options = _config_file(MOSQUITTO_DIR / "config" / "mosquitto.conf")
        actual = (
            options["max_queued_messages"],
            options["max_queued_bytes"],
            options["max_inflight_messages"],
        )
        assert ([str(ctl.MAX_QUEUED_MESSAGES)], ["0"], ["0"]) == actual
        assert ctl.MAX_QUEUED_MESSAGES >= 100_000

    def test_persists_on_its_volume(self, resolved: dict[str, Any]) -> None:
        """Sessions and queued messages are saved in the mosquitto-data volume (and every
        autosave_interval s, like the local broker)."""
        options = _config_file(MOSQUITTO_DIR / "config" / "mosquitto.conf")
        location = options["persistence_location"][0]
        actual = (
            options["persistence"],
            _mount_source(resolved, "mosquitto", location.rstrip("/")),
            options["autosave_interval"],
        )
        expected = (["true"], "mosquitto-data", [str(_mosquittoctl().AUTOSAVE_SECONDS)])
        assert expected == actual

    def test_plain_stack_allows_anonymous_on_1883(self) -> None:
        """One listener, on 1883 (every interface of the container), anonymous allowed."""
        options = _config_file(MOSQUITTO_DIR / "config" / "mosquitto.conf")
        assert (["1883"], ["true"]) == (options["listener"], options["allow_anonymous"])

    def test_secure_config_differs_only_in_logins(self) -> None:
        """mosquitto-secure.conf is mosquitto.conf with anonymous off and a password file."""
        plain = _config_file(MOSQUITTO_DIR / "config" / "mosquitto.conf")
        secure = _config_file(MOSQUITTO_DIR / "config" / "mosquitto-secure.conf")
        expected = {**plain, "allow_anonymous": ["false"]}
        assert ["/tmp/mosquitto-passwords"] == secure.pop("password_file")
        assert expected == secure

    def test_stand_in_runs_the_image_user_and_port(self) -> None:
        """The stand-in installs Debian's mosquitto, owns /mosquitto as uid 1883 and
        exposes 1883."""
        dockerfile = (MOSQUITTO_DIR / "Dockerfile").read_text()
        actual = (
            "ARG BASE_IMAGE=" in dockerfile,
            "install -y --no-install-recommends mosquitto" in dockerfile,
            "chown -R 1883:1883 /mosquitto" in dockerfile,
            re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE),
        )
        assert (True, True, True, ["1883"]) == actual


class TestPostgres:
    def test_image_is_timescaledb_on_postgresql_16(self, resolved: dict[str, Any]) -> None:
        """timescale/timescaledb at a pinned release for PostgreSQL 16 by default."""
        image = resolved["services"]["postgres"]["image"]
        assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg16", image), image

    def test_data_on_a_volume_and_socket_on_tmpfs(self, resolved: dict[str, Any]) -> None:
        """PGDATA is the postgres-data volume; the socket directory is writable (tmpfs)
        under the read-only root."""
        postgres = resolved["services"]["postgres"]
        pgdata = _environment(postgres)["PGDATA"]
        actual = (_mount_source(resolved, "postgres", pgdata), postgres["tmpfs"])
        assert ("postgres-data", ["/tmp", "/run"]) == actual

    def test_sink_logs_in_as_the_created_user(self, resolved: dict[str, Any]) -> None:
        """The sink connects to the postgres service as the user, database and password
        the image creates at its first start."""
        env = _environment(resolved["services"]["postgres"])
        settings = _settings(resolved, "sink")
        assert settings.database_password is not None
        actual = (
            settings.database_host,
            settings.database_port,
            settings.database_user,
            settings.database_name,
            settings.database_password.get_secret_value(),
        )
        expected = (
            "postgres",
            5432,
            env["POSTGRES_USER"],
            env["POSTGRES_DB"],
            env["POSTGRES_PASSWORD"],
        )
        assert expected == actual

    def test_password_is_one_knob(self, tmp_path: Path) -> None:
        """DATABASE_PASSWORD sets the server's, the sink's and Grafana's password at once."""
        env_file = tmp_path / "env"
        env_file.write_text("DATABASE_PASSWORD=knob-value\n")
        result = run_tool(
            "docker-compose", "--env-file", str(env_file), "-f", "docker-compose.yml", "config"
        )
        assert 0 == result.returncode, result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        values = {
            _environment(services["postgres"])["POSTGRES_PASSWORD"],
            _environment(services["sink"])["SENSORSTREAM_DATABASE_PASSWORD"],
            _environment(services["grafana"])["SENSORSTREAM_POSTGRES_PASSWORD"],
        }
        assert {"knob-value"} == values

    def test_grafana_datasource_is_this_database(self, resolved: dict[str, Any]) -> None:
        """Grafana's PostgreSQL datasource points at the postgres service with its user and
        database, and Grafana gets the password the datasource reads from its environment."""
        datasources = yaml.safe_load(
            (REPO / "deploy/grafana/provisioning/datasources/postgres.yml").read_text()
        )["datasources"]
        source = next(d for d in datasources if d["uid"] == "sensorstream-postgres")
        env = _environment(resolved["services"]["postgres"])
        grafana = _environment(resolved["services"]["grafana"])
        variable = re.fullmatch(r"\$__env\{(\w+)\}", source["secureJsonData"]["password"])
        assert variable is not None
        actual = (
            source["url"],
            source["user"],
            source["jsonData"]["database"],
            grafana[variable.group(1)],
        )
        assert (
            "postgres:5432",
            env["POSTGRES_USER"],
            env["POSTGRES_DB"],
            env["POSTGRES_PASSWORD"],
        ) == actual

    def test_stand_in_has_the_interface_compose_uses(self, resolved: dict[str, Any]) -> None:
        """The stand-in runs as the user compose runs it as, keeps PGDATA where compose
        mounts the volume, stops fast on SIGINT and has pg_isready (the healthcheck) on
        its PATH; its entrypoint reads each POSTGRES_* variable compose sets."""
        dockerfile = (POSTGRES_DIR / "Dockerfile").read_text()
        entrypoint = (POSTGRES_DIR / "docker-entrypoint.sh").read_text()
        env = _environment(resolved["services"]["postgres"])
        healthcheck = resolved["services"]["postgres"]["healthcheck"]["test"]
        unread = [key for key in env if key.startswith("POSTGRES_") and key not in entrypoint]
        actual = (
            f"PGDATA={env['PGDATA']}" in dockerfile,
            "STOPSIGNAL SIGINT" in dockerfile,
            "postgresql-bin:$PATH" in dockerfile,
            healthcheck[:2],
            unread,
            "POSTGRES_PASSWORD_FILE" in entrypoint,
        )
        assert (True, True, True, ["CMD", "pg_isready"], [], True) == actual

    def test_sink_waits_for_the_database(self, resolved: dict[str, Any]) -> None:
        """The sink starts once postgres has started (never service_healthy) and retries an
        unreachable database for ever, so PostgreSQL's first-start initialisation (and a
        later restart) only delays it."""
        sink = resolved["services"]["sink"]
        settings = _settings(resolved, "sink")
        actual = (sink["depends_on"]["postgres"]["condition"], settings.database_retry_budget)
        assert ("service_started", math.inf) == actual


class TestBridge:
    def test_waits_for_topics_and_mosquitto(self, resolved: dict[str, Any]) -> None:
        """The bridge starts after init-topics completed and once mosquitto started."""
        depends = resolved["services"]["bridge"]["depends_on"]
        actual = {name: spec["condition"] for name, spec in depends.items()}
        expected = {
            "kafka": "service_started",
            "init-topics": "service_completed_successfully",
            "mosquitto": "service_started",
        }
        assert expected == actual

    @pytest.mark.parametrize("name", ["bridge", "devices"])
    def test_mqtt_address_is_the_broker(self, resolved: dict[str, Any], name: str) -> None:
        """Bridge and devices connect to the mosquitto service on the port it listens on."""
        listener = _config_file(MOSQUITTO_DIR / "config" / "mosquitto.conf")["listener"]
        settings = _settings(resolved, name)
        assert ("mosquitto", int(listener[0])) == (settings.mqtt_host, settings.mqtt_port)

    def test_one_instance_without_host_ports(self, resolved: dict[str, Any]) -> None:
        """One bridge (a second with the same MQTT client id would take its session over),
        reached over the compose network only."""
        bridge = resolved["services"]["bridge"]
        replicas = bridge.get("deploy", {}).get("replicas", 1)
        assert (None, 1) == (bridge.get("ports"), replicas)

    def test_devices_run_the_simulator_from_the_bridge_image(
        self, resolved: dict[str, Any]
    ) -> None:
        """devices: sensorstream-mqtt-devices from the bridge's image, with no end (no
        --count, no --duration), a modest rate, and no healthcheck (it serves no
        /healthz, which the image's healthcheck asks)."""
        devices = resolved["services"]["devices"]
        bridge = resolved["services"]["bridge"]
        settings = _settings(resolved, "devices")
        actual = (
            devices["image"],
            devices["build"],
            devices["entrypoint"],
            devices.get("command"),
            settings.count,
            settings.duration,
            0 < settings.rate <= 500,
            devices["healthcheck"],
        )
        expected = (
            bridge["image"],
            bridge["build"],
            ["/app/.venv/bin/sensorstream-mqtt-devices"],
            None,
            None,
            None,
            True,
            {"test": ["NONE"]},
        )
        assert expected == actual

    def test_devices_and_producer_never_share_a_sensor(self, resolved: dict[str, Any]) -> None:
        """The fleets the producer and the devices build from their compose settings have
        no sensor id in common: the audit follows each sensor's seq, and two fleets
        publishing one sensor would look like repeated and reordered readings."""

        async def fleets() -> tuple[list[str], list[str]]:
            producer = ProducerService(
                _settings(resolved, "producer"), StopSignal(), registry=CollectorRegistry()
            )
            devices = DeviceGateway(_settings(resolved, "devices"), StopSignal())
            return producer.fleet.sensor_ids, devices.fleet.sensor_ids

        producer_ids, device_ids = asyncio.run(fleets())
        assert (100, 20) == (len(producer_ids), len(device_ids))
        assert set() == set(producer_ids) & set(device_ids)

    def test_devices_ids_stay_apart_at_any_fleet_size(self, tmp_path: Path) -> None:
        """However many sensors the knobs ask for, the two fleets stay apart (a numeric
        offset would collide once PRODUCER_SENSORS grew past it; a prefix does not)."""
        env_file = tmp_path / "env"
        env_file.write_text("PRODUCER_SENSORS=100000\nDEVICES_SENSORS=100000\n")
        result = run_tool(
            "docker-compose", "--env-file", str(env_file), "-f", "docker-compose.yml", "config"
        )
        assert 0 == result.returncode, result.stderr
        config = yaml.safe_load(result.stdout)
        producer = _settings(config, "producer")
        devices = _settings(config, "devices")
        overlap = set(sensor_ids(producer.sensors)) & set(
            sensor_ids(devices.sensors, devices.sensor_prefix)
        )
        assert (100_000, 100_000, set()) == (producer.sensors, devices.sensors, overlap)
