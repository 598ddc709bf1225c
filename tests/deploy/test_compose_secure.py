"""docker-compose.secure.yml over docker-compose.yml: the same stack over SASL_SSL.

Everything is checked against what docker-compose resolves the two files to, and every
container path is followed to what the container would find there: a compose secret (a
stand-in file here), a file the `certs` service made into a volume (its entrypoint is run
here, with this machine's openssl, as the container would run it) or a bind-mounted file of
the repository. So a setting that points at nothing fails, as it would in the container.

Kafka's configuration is what run.sh writes from the compose environment (with `java`
standing in), and a real broker started from it must let the services' settings in and
keep a wrong password out.
"""

from __future__ import annotations

import base64
import fnmatch
import http.server
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kafkactl
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from deploy_helpers import REPO, require_binary, run_tool

from sensorstream.audit.settings import AuditSettings
from sensorstream.bridge.settings import BridgeSettings, DevicesSettings
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import ServiceSettings
from sensorstream.runtime.kafka import connect_admin
from sensorstream.runtime.topics import TopicsSettings
from sensorstream.schema import SecurityError
from sensorstream.sink.settings import SinkSettings

COMPOSE = ("-f", "docker-compose.yml", "-f", "docker-compose.secure.yml")
# The Kafka clients.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "producer": ProducerSettings,
    "processor": ProcessorSettings,
    "init-topics": TopicsSettings,
    "audit": AuditSettings,
    "bridge": BridgeSettings,
    "sink": SinkSettings,
}
# Every sensorstream service: the Kafka clients and the devices (MQTT only).
ALL_SETTINGS: dict[str, type[ServiceSettings]] = {**SETTINGS, "devices": DevicesSettings}
METRICS_SERVICES = ("producer", "processor", "audit", "bridge", "sink")
MQTT_CLIENTS = ("bridge", "devices")
# Everything that mounts what `certs` makes.
AFTER_CERTS = (
    "kafka",
    "init-topics",
    "producer",
    "processor",
    "audit",
    "bridge",
    "sink",
    "prometheus",
)
KAFKA_DIR = REPO / "deploy" / "compose" / "kafka"
MAKE_CERTS = KAFKA_DIR / "make-certs.sh"
RUN_SH = KAFKA_DIR / "run.sh"
SECRETS_DIR = REPO / "deploy" / "compose" / "secrets"
MOSQUITTO_CONFIG = REPO / "deploy" / "compose" / "mosquitto" / "config"
VOLUMES_WITH_THE_CA = ("kafka", "services", "prometheus")
DEFAULT_CLUSTER_ID = "5L6g3nShT-eMCtK--X86sw"
BROKER_START_TIMEOUT = 60.0


# --------------------------------------------------------------------------- helpers


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The variables the container gets. A key the override sets to nothing (null) is not
    set in the container (compose would pass the host's variable of that name, if any)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): str(v) for k, v in env.items() if v is not None}


def _mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read_only) of a resolved volume entry."""
    if isinstance(volume, dict):
        return str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def _host_path(
    resolved: dict[str, Any], name: str, path: str, certs: Path, secrets: Path
) -> Path | None:
    """What service ``name`` finds at ``path``, here: a secret's stand-in, a file `certs`
    made into a volume, or a bind-mounted file; None if nothing is mounted there."""
    service = resolved["services"][name]
    for secret in service.get("secrets", []):
        if path == secret.get("target") or path == f"/run/secrets/{secret['source']}":
            return secrets / secret["source"]
    made_by_certs = {
        source: target
        for source, target, _ in map(_mount, resolved["services"]["certs"]["volumes"])
    }
    for source, target, _ in map(_mount, service.get("volumes", [])):
        if not path.startswith(target.rstrip("/") + "/"):
            continue
        rest = path[len(target.rstrip("/")) + 1 :]
        if source.startswith("/"):
            return Path(source) / rest
        if source in made_by_certs:
            return certs / Path(made_by_certs[source]).relative_to("/certs") / rest
    return None


def _settings(
    resolved: dict[str, Any],
    name: str,
    certs: Path,
    secrets: Path,
    **overrides: str,
) -> ServiceSettings:
    """The service's settings as it loads them from its compose environment (paths followed
    to their files here), with ``overrides`` (field names) on top."""
    env: dict[str, str] = {}
    for key, value in _environment(resolved["services"][name]).items():
        if not key.startswith("SENSORSTREAM_"):
            continue
        if value.startswith("/"):
            host = _host_path(resolved, name, value, certs, secrets)
            assert host is not None, f"{name}: {key}={value}, but nothing is mounted there"
            assert host.is_file(), f"{name}: {key}={value}, but {host} is no file"
            value = str(host)
        env[key] = value
    env.update({f"SENSORSTREAM_{field.upper()}": value for field, value in overrides.items()})
    with pytest.MonkeyPatch.context() as patch:
        for key in [key for key in os.environ if key.startswith("SENSORSTREAM_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        # From the environment, as the service reads it (pydantic-settings' own path).
        return ALL_SETTINGS[name]()


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.DNSName)} | {
        str(v) for v in names.get_values_for_type(x509.IPAddress)
    }


def _public_key(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN ([A-Z ]+)-----", text)


def _make_certs(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """make-certs.sh OUT with this machine's sh and openssl."""
    require_binary("openssl")
    return subprocess.run(
        ["sh", str(MAKE_CERTS), str(out)],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``directory``: content, mtime and mode."""
    return {
        str(path.relative_to(directory)): (
            path.read_bytes(),
            path.stat().st_mtime_ns,
            stat.S_IMODE(path.stat().st_mode),
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _openssl_verify(ca: Path, cert: Path) -> tuple[int, str]:
    result = run_tool("openssl", "verify", "-CAfile", str(ca), str(cert))
    return result.returncode, result.stdout.strip()


@dataclass(frozen=True)
class KafkaStart:
    """What run.sh did with ``java`` standing in: its exit, the properties it wrote and the
    java command lines it ran (the format, then the broker)."""

    returncode: int
    stderr: str
    properties: dict[str, str]
    calls: list[list[str]]

    def tool_args(self, main_class: str) -> list[str]:
        """The arguments after ``main_class`` of the call that ran it."""
        call = next(call for call in self.calls if main_class in call)
        return call[call.index(main_class) + 1 :]


def _run_kafka_script(env: dict[str, str], tmp: Path) -> KafkaStart:
    tmp.mkdir(parents=True, exist_ok=True)
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    java = bin_dir / "java"
    java.write_text(
        '#!/bin/sh\nfor arg in "$@"; do printf "%s\\037" "$arg"; done >> "$JAVA_CALLS"\n'
        'echo >> "$JAVA_CALLS"\n'
    )
    java.chmod(0o755)
    calls_file = tmp / "java-calls"
    calls_file.unlink(missing_ok=True)
    conf_dir = tmp / "config"
    result = subprocess.run(
        ["sh", str(RUN_SH)],
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "JAVA_CALLS": str(calls_file),
            "KAFKA_CONFIG_DIR": str(conf_dir),
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    conf = conf_dir / "server.properties"
    properties = (
        dict(line.split("=", 1) for line in conf.read_text().splitlines() if line)
        if conf.exists()
        else {}
    )
    calls = (
        [line.rstrip("\x1f").split("\x1f") for line in calls_file.read_text().splitlines()]
        if calls_file.exists()
        else []
    )
    return KafkaStart(result.returncode, result.stderr, properties, calls)


def _kafka_env(
    resolved: dict[str, Any], certs: Path, secrets: Path, data_dir: Path
) -> dict[str, str]:
    """The kafka service's environment, its paths followed to their files here."""
    env = {}
    for key, value in _environment(resolved["services"]["kafka"]).items():
        if key == "KAFKA_LOG_DIRS":
            value = str(data_dir)
        elif value.startswith("/"):
            host = _host_path(resolved, "kafka", value, certs, secrets)
            assert host is not None, f"kafka: {key}={value}, but nothing is mounted there"
            assert host.exists(), f"kafka: {key}={value}, but {host} does not exist"
            value = str(host)
        env[key] = value
    return env


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as {name: (host, port)}."""
    listeners = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        listeners[name] = (host, int(port))
    return listeners


def _protocols(properties: dict[str, str]) -> dict[str, str]:
    return dict(
        item.split(":", 1) for item in properties["listener.security.protocol.map"].split(",")
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """Both files as docker-compose resolves them (merged, anchors expanded, defaults)."""
    result = run_tool("docker-compose", *COMPOSE, "config")
    assert 0 == result.returncode, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def secrets(resolved: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-ins for deploy/compose/secrets: one password file per declared secret."""
    directory = tmp_path_factory.mktemp("secrets")
    for name in resolved["secrets"]:
        (directory / name).write_text(f"test-{name}-value\n")
    return directory


@pytest.fixture(scope="module")
def certs(
    resolved: dict[str, Any], secrets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """What the `certs` service leaves in its volumes: its entrypoint run here, with the
    image's make-certs.sh, /certs and /run/secrets mapped to this machine."""
    require_binary("openssl")
    out = tmp_path_factory.mktemp("certs")
    entrypoint = resolved["services"]["certs"]["entrypoint"]
    assert ["/bin/sh", "-c"] == entrypoint[:2]
    script = entrypoint[2].replace("/run/secrets/", f"{secrets}/")
    script = script.replace("/opt/kafka/make-certs.sh", str(MAKE_CERTS))
    script = re.sub(r"/certs\b", str(out), script)
    result = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": os.environ["PATH"], **_environment(resolved["services"]["certs"])},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert 0 == result.returncode, result.stderr
    return out


@pytest.fixture(scope="module")
def kafka_start(
    resolved: dict[str, Any],
    certs: Path,
    secrets: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> KafkaStart:
    """run.sh with the kafka service's environment."""
    tmp = tmp_path_factory.mktemp("kafka-start")
    start = _run_kafka_script(_kafka_env(resolved, certs, secrets, tmp / "data"), tmp)
    assert 0 == start.returncode, start.stderr
    return start


@pytest.fixture(scope="module")
def prometheus_config(resolved: dict[str, Any], certs: Path, secrets: Path) -> dict[str, Any]:
    """The Prometheus config the prometheus service is started with."""
    command = resolved["services"]["prometheus"]["command"]
    flag = next(arg for arg in command if arg.startswith("--config.file="))
    path = _host_path(resolved, "prometheus", flag.split("=", 1)[1], certs, secrets)
    assert REPO / "deploy" / "prometheus" / "prometheus-secure.yml" == path
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


# --------------------------------------------------------------------------- tests


class TestValidity:
    def test_config_quiet_passes(self) -> None:
        """docker-compose 1.29 validates the override over the base file without an engine."""
        result = run_tool("docker-compose", *COMPOSE, "config", "-q")
        assert (0, "") == (result.returncode, result.stderr.strip())

    def test_env_example_is_accepted(self) -> None:
        """.env.example is a valid env file for both files together."""
        result = run_tool("docker-compose", "--env-file", ".env.example", *COMPOSE, "config", "-q")
        assert (0, "") == (result.returncode, result.stderr.strip())

    def test_services(self, resolved: dict[str, Any]) -> None:
        """The stack of docker-compose.yml, plus the one-shot `certs`."""
        expected = {
            "certs",
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


class TestSettings:
    @pytest.mark.parametrize("name", sorted(SETTINGS))
    def test_sasl_ssl_with_scram(self, resolved: dict[str, Any], name: str) -> None:
        """Every sensorstream service speaks SASL_SSL with SCRAM-SHA-512 to kafka:9092."""
        env = _environment(resolved["services"][name])
        actual = (
            env.get("SENSORSTREAM_SECURITY_PROTOCOL"),
            env.get("SENSORSTREAM_SASL_MECHANISM"),
            env.get("SENSORSTREAM_BOOTSTRAP_SERVERS"),
        )
        assert ("SASL_SSL", "SCRAM-SHA-512", "kafka:9092") == actual

    @pytest.mark.parametrize("name", sorted(ALL_SETTINGS))
    def test_every_sensorstream_variable_is_a_setting(
        self, resolved: dict[str, Any], name: str
    ) -> None:
        """Every SENSORSTREAM_* the two files set is a field of the service's settings."""
        env = _environment(resolved["services"][name])
        fields = {f"SENSORSTREAM_{field.upper()}" for field in ALL_SETTINGS[name].model_fields}
        assert set() == {key for key in env if key.startswith("SENSORSTREAM_")} - fields

    @pytest.mark.parametrize("name", sorted(SETTINGS))
    def test_compose_values_validate(
        self, resolved: dict[str, Any], certs: Path, secrets: Path, name: str
    ) -> None:
        """The values load into the settings model, each path being a file the container
        has, and the passwords are the secrets' contents."""
        settings = _settings(resolved, name, certs, secrets)
        assert settings.sasl_password is not None
        actual = (settings.security_protocol, settings.sasl_password.get_secret_value())
        assert ("SASL_SSL", "test-sasl_password-value") == actual

    @pytest.mark.parametrize("name", METRICS_SERVICES)
    def test_metrics_endpoints_are_protected(
        self, resolved: dict[str, Any], certs: Path, secrets: Path, name: str
    ) -> None:
        """/metrics, /healthz and /readyz need a login and speak HTTPS."""
        settings = _settings(resolved, name, certs, secrets)
        assert settings.metrics_auth_password is not None
        actual = (
            settings.metrics_auth_username,
            settings.metrics_auth_password.get_secret_value(),
            settings.metrics_tls_certfile is not None,
            settings.metrics_tls_keyfile is not None,
        )
        assert ("prometheus", "test-metrics_password-value", True, True) == actual

    @pytest.mark.parametrize("name", METRICS_SERVICES)
    def test_healthcheck_logs_in_over_https(
        self,
        resolved: dict[str, Any],
        certs: Path,
        secrets: Path,
        tmp_path: Path,
        name: str,
    ) -> None:
        """The images' plain-HTTP healthcheck would fail: compose replaces it with one that
        checks the certificate against the CA and logs in. Run here against an HTTPS server
        with the service's certificate, it passes with the right password only."""
        test = resolved["services"][name]["healthcheck"]["test"]
        assert "CMD-SHELL" == test[0]
        settings = _settings(resolved, name, certs, secrets)
        assert settings.metrics_tls_certfile is not None
        assert settings.metrics_tls_keyfile is not None
        assert settings.metrics_auth_password is not None
        login = (
            f"{settings.metrics_auth_username}:{settings.metrics_auth_password.get_secret_value()}"
        )
        expected = "Basic " + base64.b64encode(login.encode()).decode()

        class Healthz(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/healthz" and self.headers["Authorization"] == expected
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.metrics_tls_certfile, settings.metrics_tls_keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        (tmp_path / "python").symlink_to(sys.executable)
        (tmp_path / "wrong").write_text("not-the-password\n")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SENSORSTREAM_")},
            "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
            "SENSORSTREAM_METRICS_AUTH_USERNAME": str(settings.metrics_auth_username),
            "SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE": str(settings.metrics_auth_password_file),
            "SENSORSTREAM_SSL_CAFILE": str(settings.ssl_cafile),
            "SENSORSTREAM_METRICS_PORT": str(server.server_address[1]),
        }
        try:
            right, wrong = (
                subprocess.run(
                    ["sh", "-c", test[1]],
                    env={**env, **extra},
                    capture_output=True,
                    check=False,
                    timeout=30,
                ).returncode
                for extra in (
                    {},
                    {"SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE": str(tmp_path / "wrong")},
                )
            )
        finally:
            server.shutdown()
            server.server_close()
        assert (0, 1) == (right, wrong)

    def test_no_healthcheck_argument_has_a_space(self, resolved: dict[str, Any]) -> None:
        """podman's Docker API splits each argument of a CMD-form healthcheck at its spaces,
        so an argument with a space must be one CMD-SHELL string instead."""
        spaced = [
            name
            for name, service in resolved["services"].items()
            if (test := service.get("healthcheck", {}).get("test", []))[:1] == ["CMD"]
            and any(" " in argument for argument in test[1:])
        ]
        assert [] == spaced


class TestSecrets:
    def test_declared_with_files_under_deploy_compose_secrets(
        self, resolved: dict[str, Any]
    ) -> None:
        """Both secrets are files in deploy/compose/secrets."""
        files = {name: Path(spec["file"]) for name, spec in resolved["secrets"].items()}
        expected = {
            "sasl_password": SECRETS_DIR / "sasl_password",
            "metrics_password": SECRETS_DIR / "metrics_password",
            "postgres_password": SECRETS_DIR / "postgres_password",
            "mqtt_password": SECRETS_DIR / "mqtt_password",
        }
        assert expected == files

    def test_secret_files_are_gitignored(self, resolved: dict[str, Any]) -> None:
        """.gitignore keeps the secret files out of git, and not the README beside them."""
        patterns = [
            line.strip()
            for line in (REPO / ".gitignore").read_text().splitlines()
            if line.strip() and not line.startswith(("#", "!"))
        ]

        def ignored(path: Path) -> bool:
            relative = str(path.relative_to(REPO))
            return any(fnmatch.fnmatchcase(relative, p.removeprefix("/")) for p in patterns)

        files = [Path(spec["file"]) for spec in resolved["secrets"].values()]
        assert (True, False) == (
            all(map(ignored, files)),
            ignored(SECRETS_DIR / "README.md"),
        )

    def test_readme_explains_each_secret(self, resolved: dict[str, Any]) -> None:
        """deploy/compose/secrets/README.md names every secret and how it is made."""
        readme = (SECRETS_DIR / "README.md").read_text()
        missing = [name for name in resolved["secrets"] if f"`{name}`" not in readme]
        assert ([], True) == (missing, "make compose-secrets" in readme)

    def test_no_password_in_any_environment(self, resolved: dict[str, Any]) -> None:
        """No service of ours (nor Kafka, Mosquitto, PostgreSQL or Prometheus) gets a
        password in its environment: only the paths of files holding them. The base file's
        database password variables are removed, not just overridden."""
        offending = [
            f"{name}: {key}"
            for name in (*ALL_SETTINGS, "kafka", "certs", "prometheus", "mosquitto", "postgres")
            for key in _environment(resolved["services"][name])
            if "PASSWORD" in key and not key.endswith("_PASSWORD_FILE")
        ]
        assert [] == offending

    @pytest.mark.parametrize("name", [*sorted(ALL_SETTINGS), "postgres"])
    def test_password_files_are_the_services_secrets(
        self, resolved: dict[str, Any], name: str
    ) -> None:
        """Each *_PASSWORD_FILE is /run/secrets/<a secret this service mounts>."""
        service = resolved["services"][name]
        mounted = {f"/run/secrets/{secret['source']}" for secret in service["secrets"]}
        files = {
            value for key, value in _environment(service).items() if key.endswith("_PASSWORD_FILE")
        }
        assert files
        assert set() == files - mounted

    def test_one_sasl_login(self, resolved: dict[str, Any]) -> None:
        """The broker's SCRAM user is the services' user, with the same secret."""
        kafka = _environment(resolved["services"]["kafka"])
        logins = {
            (env["SENSORSTREAM_SASL_USERNAME"], env["SENSORSTREAM_SASL_PASSWORD_FILE"])
            for env in (_environment(resolved["services"][name]) for name in SETTINGS)
        }
        assert {(kafka["SCRAM_USERNAME"], kafka["SCRAM_PASSWORD_FILE"])} == logins
        assert "/run/secrets/sasl_password" == kafka["SCRAM_PASSWORD_FILE"]


class TestMqttLogins:
    def test_mosquitto_refuses_anonymous_clients(self, resolved: dict[str, Any]) -> None:
        """Mosquitto starts with mosquitto-secure.conf (anonymous off, a password file),
        the mounted file beside the plain stack's."""
        script = resolved["services"]["mosquitto"]["entrypoint"][-1]
        conf = re.search(r"-c (/mosquitto/config/\S+)$", script)
        assert conf is not None
        host = _host_path(resolved, "mosquitto", conf.group(1), Path(), Path())
        assert host == MOSQUITTO_CONFIG / "mosquitto-secure.conf"
        options = dict(
            line.split(" ", 1)
            for line in host.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        assert ("false", True) == (
            options["allow_anonymous"],
            options["password_file"].startswith("/tmp/"),
        )

    def test_entrypoint_makes_the_password_file_the_clients_log_in_with(
        self, resolved: dict[str, Any], secrets: Path, tmp_path: Path
    ) -> None:
        """Run here (this machine's mosquitto_passwd, /tmp and /run/secrets mapped), the
        entrypoint writes the file mosquitto-secure.conf names, 0600, with exactly the user
        the bridge and the devices log in as, its password hashed, then execs mosquitto."""
        require_binary("mosquitto_passwd")
        service = resolved["services"]["mosquitto"]
        assert ["/bin/sh", "-c"] == service["entrypoint"][:2]
        script = service["entrypoint"][2].replace("$$", "$")
        script = script.replace("/tmp/", f"{tmp_path}/").replace("/run/secrets/", f"{secrets}/")
        script = script.replace("/usr/bin/mosquitto_passwd", require_binary("mosquitto_passwd"))
        script = script.replace("exec /usr/sbin/mosquitto", "exec echo mosquitto")
        result = subprocess.run(
            ["sh", "-c", script],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert 0 == result.returncode, result.stderr
        conf = (MOSQUITTO_CONFIG / "mosquitto-secure.conf").read_text()
        password_file = re.search(r"^password_file /tmp/(\S+)$", conf, re.MULTILINE)
        assert password_file is not None
        made = tmp_path / password_file.group(1)
        users = dict(line.split(":", 1) for line in made.read_text().splitlines())
        logins = {
            (env["SENSORSTREAM_MQTT_USERNAME"], env["SENSORSTREAM_MQTT_PASSWORD_FILE"])
            for env in (_environment(resolved["services"][name]) for name in MQTT_CLIENTS)
        }
        assert {(user, "/run/secrets/mqtt_password") for user in users} == logins
        assert all(hashed.startswith("$7$") for hashed in users.values())
        assert 0o600 == stat.S_IMODE(made.stat().st_mode)
        assert result.stdout.startswith("mosquitto -c /mosquitto/config/mosquitto-secure.conf")

    @pytest.mark.parametrize("name", MQTT_CLIENTS)
    def test_clients_load_the_mqtt_password(
        self, resolved: dict[str, Any], certs: Path, secrets: Path, name: str
    ) -> None:
        """Bridge and devices read the MQTT password from the secret."""
        settings = _settings(resolved, name, certs, secrets)
        assert settings.mqtt_password is not None  # type: ignore[attr-defined]
        password = settings.mqtt_password.get_secret_value()  # type: ignore[attr-defined]
        assert "test-mqtt_password-value" == password


class TestDatabasePassword:
    def test_postgres_takes_the_secret_only(self, resolved: dict[str, Any]) -> None:
        """PostgreSQL initialises with POSTGRES_PASSWORD_FILE, the secret; the base file's
        POSTGRES_PASSWORD is removed (the images refuse both)."""
        postgres = resolved["services"]["postgres"]
        env = _environment(postgres)
        mounted = [secret["source"] for secret in postgres["secrets"]]
        actual = ("POSTGRES_PASSWORD" in env, env["POSTGRES_PASSWORD_FILE"], mounted)
        assert (False, "/run/secrets/postgres_password", ["postgres_password"]) == actual

    def test_sink_logs_in_with_the_secret(
        self, resolved: dict[str, Any], certs: Path, secrets: Path
    ) -> None:
        """The sink loads its database password from the same secret (with the base file's
        SENSORSTREAM_DATABASE_PASSWORD left in, it would refuse to start: both given), as
        the user and database PostgreSQL creates."""
        settings = _settings(resolved, "sink", certs, secrets)
        postgres = _environment(resolved["services"]["postgres"])
        assert settings.database_password is not None  # type: ignore[attr-defined]
        actual = (
            settings.database_password.get_secret_value(),  # type: ignore[attr-defined]
            settings.database_user,  # type: ignore[attr-defined]
            settings.database_name,  # type: ignore[attr-defined]
        )
        expected = (
            "test-postgres_password-value",
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_DB"],
        )
        assert expected == actual

    def test_grafana_reads_the_secret(self, resolved: dict[str, Any]) -> None:
        """Grafana's PostgreSQL datasource is replaced by the same one reading the password
        from the postgres_password secret Grafana mounts; its environment has none."""
        grafana = resolved["services"]["grafana"]
        target = "/etc/grafana/provisioning/datasources/postgres.yml"
        # A file mounted onto a file inside the provisioning directory's mount.
        source = next(Path(host) for host, at, _ in map(_mount, grafana["volumes"]) if at == target)
        base = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "postgres.yml"
        secure, plain = (yaml.safe_load(path.read_text()) for path in (source, base))
        password = secure["datasources"][0]["secureJsonData"].pop("password")
        plain["datasources"][0]["secureJsonData"].pop("password")
        mounted = [secret["source"] for secret in grafana["secrets"]]
        assert (plain, "$__file{/run/secrets/postgres_password}") == (secure, password)
        assert (["postgres_password"], False) == (
            mounted,
            "SENSORSTREAM_POSTGRES_PASSWORD" in _environment(grafana),
        )


class TestKafka:
    def test_image_is_ours_at_the_local_broker_version(self, resolved: dict[str, Any]) -> None:
        """kafka and certs run our image (run.sh's --add-scram, openssl, make-certs.sh), built
        from deploy/compose/kafka/Dockerfile at the local broker's release."""
        version = kafkactl.kafka_version()
        actual = {
            (resolved["services"][n]["image"], resolved["services"][n]["build"]["dockerfile"])
            for n in ("kafka", "certs")
        }
        expected = {(f"localhost/sensorstream-kafka:{version}", "deploy/compose/kafka/Dockerfile")}
        assert expected == actual

    def test_services_bootstrap_from_a_sasl_ssl_listener(self, kafka_start: KafkaStart) -> None:
        """kafka:9092, the services' bootstrap, is advertised by a SASL_SSL listener that
        listens on port 9092 of every interface."""
        properties = kafka_start.properties
        advertised = _listeners(properties["advertised.listeners"])
        name = next(n for n, address in advertised.items() if address == ("kafka", 9092))
        actual = (_protocols(properties)[name], _listeners(properties["listeners"])[name])
        assert ("SASL_SSL", ("", 9092)) == actual

    def test_sasl_ssl_listeners_offer_scram_with_a_jaas_config(
        self, kafka_start: KafkaStart
    ) -> None:
        """SCRAM-SHA-512 is the one mechanism, and each SASL_SSL listener has its JAAS
        config: the SCRAM login module, without any password in it."""
        properties = kafka_start.properties
        sasl_ssl = sorted(n for n, p in _protocols(properties).items() if p == "SASL_SSL")
        jaas = {
            properties.get(f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config")
            for name in sasl_ssl
        }
        module = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        assert (["CLIENTS", "HOST"], "SCRAM-SHA-512", {module}) == (
            sasl_ssl,
            properties["sasl.enabled.mechanisms"],
            jaas,
        )

    def test_plaintext_only_on_loopback(self, kafka_start: KafkaStart) -> None:
        """Inter-broker and controller traffic stay PLAINTEXT, on listeners bound to
        127.0.0.1, so no other container can skip the login."""
        properties = kafka_start.properties
        listeners = _listeners(properties["listeners"])
        plaintext = {n for n, p in _protocols(properties).items() if p != "SASL_SSL"}
        internal = {
            properties["inter.broker.listener.name"],
            properties["controller.listener.names"],
        }
        hosts = {listeners[name][0] for name in plaintext}
        assert ({"127.0.0.1"}, True) == (hosts, internal <= plaintext)

    def test_host_listener_is_sasl_ssl_on_loopback(
        self, resolved: dict[str, Any], kafka_start: KafkaStart
    ) -> None:
        """The port published for clients on the host is a SASL_SSL listener, and it is
        published on 127.0.0.1 only."""
        ports = [str(port) for port in resolved["services"]["kafka"]["ports"]]
        assert ports
        assert all(port.startswith("127.0.0.1:") for port in ports)
        container_ports = {int(port.split(":")[-1].split("/")[0]) for port in ports}
        listeners = _listeners(kafka_start.properties["listeners"])
        protocols = {
            _protocols(kafka_start.properties)[name]
            for name, (_, port) in listeners.items()
            if port in container_ports
        }
        assert {"SASL_SSL"} == protocols

    def test_pem_key_store_from_certs(self, kafka_start: KafkaStart) -> None:
        """Kafka's PEM key store is the one `certs` made: the broker's PKCS#8 key first,
        then its certificate (for the name `kafka`) and the CA."""
        properties = kafka_start.properties
        keystore = Path(properties["ssl.keystore.location"])
        text = keystore.read_text()
        leaf = x509.load_pem_x509_certificate(text[text.index("-----BEGIN CERTIFICATE") :].encode())
        leaf_key = leaf.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        actual = (
            properties["ssl.keystore.type"],
            properties["ssl.truststore.type"],
            Path(properties["ssl.truststore.location"]).is_file(),
            _pem_blocks(text),
            _public_key(text.encode()) == leaf_key,
            "kafka" in _sans(leaf),
        )
        expected = ("PEM", "PEM", True, ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"], True, True)
        assert expected == actual

    def test_format_adds_the_scram_user(
        self, resolved: dict[str, Any], kafka_start: KafkaStart
    ) -> None:
        """run.sh formats the log dir with the SCRAM-SHA-512 user and its secret password,
        then starts the broker."""
        user = _environment(resolved["services"]["kafka"])["SCRAM_USERNAME"]
        args = kafka_start.tool_args("kafka.tools.StorageTool")
        scram = [args[i + 1] for i, arg in enumerate(args) if arg == "--add-scram"]
        expected = [f"SCRAM-SHA-512=[name={user},password=test-sasl_password-value]"]
        assert (expected, 2) == (scram, len(kafka_start.calls))

    def test_scram_settings_are_not_properties(self, kafka_start: KafkaStart) -> None:
        """SCRAM_USERNAME and SCRAM_PASSWORD_FILE are for run.sh, not server.properties."""
        assert [] == [key for key in kafka_start.properties if "scram" in key.split(".")[0]]

    def test_healthcheck_uses_the_loopback_listener(
        self, resolved: dict[str, Any], kafka_start: KafkaStart
    ) -> None:
        """The healthcheck asks the PLAINTEXT loopback listener (it has no credentials)."""
        test = resolved["services"]["kafka"]["healthcheck"]["test"]
        server = test[test.index("--bootstrap-server") + 1]
        host, _, port = server.rpartition(":")
        listeners = _listeners(kafka_start.properties["listeners"])
        name = next(n for n, address in listeners.items() if address == (host, int(port)))
        assert "PLAINTEXT" == _protocols(kafka_start.properties)[name]

    def test_data_volume_is_its_own(self, resolved: dict[str, Any]) -> None:
        """SCRAM users are written only when a volume is first formatted, so the secure
        broker never reuses the plaintext stack's kafka-data."""
        mounts = {
            target: source
            for source, target, _ in map(_mount, resolved["services"]["kafka"]["volumes"])
        }
        assert "kafka-secure-data" == mounts["/var/lib/kafka/data"]


class TestCertsService:
    @pytest.mark.parametrize("name", AFTER_CERTS)
    def test_certs_runs_first(self, resolved: dict[str, Any], name: str) -> None:
        """Whatever mounts what `certs` makes starts after it completed."""
        condition = resolved["services"][name]["depends_on"]["certs"]["condition"]
        assert "service_completed_successfully" == condition

    def test_no_service_waits_for_a_healthcheck(self, resolved: dict[str, Any]) -> None:
        """No `service_healthy`: podman never runs healthchecks, so it would wait forever."""
        conditions = {
            spec["condition"]
            for service in resolved["services"].values()
            for spec in (service.get("depends_on") or {}).values()
        }
        assert set() == conditions - {"service_started", "service_completed_successfully"}

    def test_hardened_one_shot_without_network(self, resolved: dict[str, Any]) -> None:
        """Read-only root, no capabilities, no privilege gain, no network, never restarted."""
        certs = resolved["services"]["certs"]
        actual = (
            certs.get("read_only"),
            certs.get("cap_drop"),
            certs.get("security_opt"),
            certs.get("network_mode"),
            certs.get("restart"),
            bool(certs.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")),
        )
        assert (True, ["ALL"], ["no-new-privileges:true"], "none", "no", True) == actual

    def test_runs_as_kafka_user_with_the_services_group(self, resolved: dict[str, Any]) -> None:
        """1000:10001: the kafka image's user (it owns the volumes), and the group of the
        producer and processor images, so their key can be 0640 and theirs to read."""

        def user(dockerfile: Path) -> str:
            match = re.search(r"^USER (\S+)$", dockerfile.read_text(), re.MULTILINE)
            assert match is not None, dockerfile
            return match.group(1)

        kafka_uid = user(KAFKA_DIR / "Dockerfile").split(":")[0]
        groups = {
            user(REPO / "services" / image / "Dockerfile").split(":")[1]
            for image in ("producer", "processor")
        }
        assert 1 == len(groups)
        assert f"{kafka_uid}:{groups.pop()}" == resolved["services"]["certs"]["user"]

    def test_volumes_are_read_only_elsewhere(self, resolved: dict[str, Any]) -> None:
        """Only `certs` writes the certificate volumes, and only it mounts the CA key's."""
        made = {source for source, _, _ in map(_mount, resolved["services"]["certs"]["volumes"])}
        writable, with_ca = [], []
        for name, service in resolved["services"].items():
            if name == "certs":
                continue
            for source, _, read_only in map(_mount, service.get("volumes", [])):
                if source in made and not read_only:
                    writable.append(f"{name}: {source}")
                if source == "certs-ca":
                    with_ca.append(name)
        assert ([], []) == (writable, with_ca)

    def test_image_has_the_mount_points(self, resolved: dict[str, Any]) -> None:
        """The kafka image creates each directory `certs` mounts a volume on (owned by uid
        1000), else a fresh volume there would be root's and unwritable."""
        dockerfile = (KAFKA_DIR / "Dockerfile").read_text()
        targets = [target for _, target, _ in map(_mount, resolved["services"]["certs"]["volumes"])]
        assert [] == [target for target in targets if target not in dockerfile]
        assert "chown -R 1000:1000 /var/lib/kafka /certs" in dockerfile

    def test_image_carries_openssl_and_the_script(self, resolved: dict[str, Any]) -> None:
        """The runtime stage installs openssl and copies make-certs.sh where `certs` calls it."""
        dockerfile = (KAFKA_DIR / "Dockerfile").read_text()
        runtime = dockerfile[dockerfile.rindex("\nFROM ") :]
        install = re.search(r"apt-get install[^&]*", runtime)
        assert install is not None
        copied = re.search(r"COPY \S* ?deploy/compose/kafka/make-certs.sh (\S+)", runtime)
        assert copied is not None
        entrypoint = resolved["services"]["certs"]["entrypoint"][-1]
        assert (True, True) == (
            "openssl" in install.group(0).split(),
            entrypoint.startswith(f"{copied.group(1)} /certs"),
        )


class TestPrometheus:
    @staticmethod
    def _jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each protected job by the compose service it scrapes."""
        return {
            job["dns_sd_configs"][0]["names"][0]: job
            for job in config["scrape_configs"]
            if "basic_auth" in job
        }

    def test_every_metrics_service_is_scraped_with_a_login(
        self, prometheus_config: dict[str, Any]
    ) -> None:
        """The secure config logs in to the producer, the processors, the audit, the bridge
        and the sinks."""
        assert set(METRICS_SERVICES) == set(self._jobs(prometheus_config))

    @pytest.mark.parametrize("name", METRICS_SERVICES)
    def test_prometheus_has_the_services_password_and_ca(
        self,
        resolved: dict[str, Any],
        certs: Path,
        secrets: Path,
        prometheus_config: dict[str, Any],
        name: str,
    ) -> None:
        """The user, the password file and the CA file of the job are, inside the prometheus
        container, the service's user, its password and the CA of its certificate."""
        job = self._jobs(prometheus_config)[name]
        settings = _settings(resolved, name, certs, secrets)
        password = _host_path(
            resolved, "prometheus", job["basic_auth"]["password_file"], certs, secrets
        )
        ca = _host_path(resolved, "prometheus", job["tls_config"]["ca_file"], certs, secrets)
        assert password is not None
        assert ca is not None
        assert settings.metrics_auth_password is not None
        assert settings.ssl_cafile is not None
        actual = (
            job["basic_auth"]["username"],
            password.read_text().removesuffix("\n"),
            ca.read_bytes(),
        )
        expected = (
            settings.metrics_auth_username,
            settings.metrics_auth_password.get_secret_value(),
            Path(settings.ssl_cafile).read_bytes(),
        )
        assert expected == actual

    @pytest.mark.parametrize("name", METRICS_SERVICES)
    def test_https_for_the_name_prometheus_checks(
        self,
        resolved: dict[str, Any],
        certs: Path,
        secrets: Path,
        prometheus_config: dict[str, Any],
        name: str,
    ) -> None:
        """The job speaks HTTPS, and the service's certificate is for the job's server_name
        (and signed by the CA Prometheus trusts)."""
        job = self._jobs(prometheus_config)[name]
        settings = _settings(resolved, name, certs, secrets)
        assert settings.metrics_tls_certfile is not None
        assert settings.ssl_cafile is not None
        cert = Path(settings.metrics_tls_certfile)
        actual = (
            job["scheme"],
            job["tls_config"]["server_name"] in _sans(_certificate(cert)),
            _openssl_verify(Path(settings.ssl_cafile), cert)[0],
        )
        assert ("https", True, 0) == actual


class TestMakeCerts:
    def test_broker_certificate_names(self, certs: Path) -> None:
        """The broker's certificate is for kafka, localhost and 127.0.0.1."""
        sans = _sans(_certificate(certs / "kafka" / "broker.pem"))
        assert {"kafka", "localhost", "127.0.0.1"} <= sans

    def test_metrics_certificate_names(self, certs: Path) -> None:
        """The metrics certificate is for every scraped service and for localhost (the
        healthchecks)."""
        sans = _sans(_certificate(certs / "services" / "metrics.pem"))
        assert {*METRICS_SERVICES, "localhost", "127.0.0.1"} <= sans

    @pytest.mark.parametrize("cert", ["kafka/broker.pem", "services/metrics.pem"])
    def test_openssl_verifies_against_the_ca(self, certs: Path, cert: str) -> None:
        """`openssl verify -CAfile` accepts each certificate."""
        assert (0, f"{certs / cert}: OK") == _openssl_verify(certs / "ca" / "ca.pem", certs / cert)

    def test_ca_is_a_ca_and_leaves_are_servers(self, certs: Path) -> None:
        """The CA may only sign; the leaves are server certificates that are no CA."""
        ca = _certificate(certs / "ca" / "ca.pem")
        leaf = _certificate(certs / "kafka" / "broker.pem")
        actual = (
            ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca,
            leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca,
            list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
        )
        assert (True, False, [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]) == actual

    def test_every_volume_gets_the_ca(self, certs: Path) -> None:
        """Each volume holds the same CA, so each mount is complete in itself."""
        ca = (certs / "ca" / "ca.pem").read_bytes()
        copies = {d: (certs / d / "ca.pem").read_bytes() == ca for d in VOLUMES_WITH_THE_CA}
        assert dict.fromkeys(VOLUMES_WITH_THE_CA, True) == copies

    def test_file_modes(self, tmp_path: Path) -> None:
        """The CA key is 0600, the other keys 0640, certificates 0644."""
        assert 0 == _make_certs(tmp_path).returncode
        modes = {
            path: oct(stat.S_IMODE((tmp_path / path).stat().st_mode))
            for path in (
                "ca/ca-key.pem",
                "kafka/broker-keystore.pem",
                "services/metrics-key.pem",
                "ca/ca.pem",
                "kafka/broker.pem",
                "services/metrics.pem",
            )
        }
        expected = {
            "ca/ca-key.pem": "0o600",
            "kafka/broker-keystore.pem": "0o640",
            "services/metrics-key.pem": "0o640",
            "ca/ca.pem": "0o644",
            "kafka/broker.pem": "0o644",
            "services/metrics.pem": "0o644",
        }
        assert expected == modes

    def test_keys_are_unencrypted_pkcs8_of_their_certificates(self, certs: Path) -> None:
        """Each key is PKCS#8 without a password, and the key of its certificate."""
        actual = []
        for key, cert in (
            ("ca/ca-key.pem", "ca/ca.pem"),
            ("kafka/broker-keystore.pem", "kafka/broker.pem"),
            ("services/metrics-key.pem", "services/metrics.pem"),
        ):
            pem = (certs / key).read_bytes()
            public = (
                _certificate(certs / cert)
                .public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            actual.append((_pem_blocks(pem.decode())[0], _public_key(pem) == public))
        assert [("PRIVATE KEY", True)] * 3 == actual

    def test_second_run_keeps_everything(self, tmp_path: Path) -> None:
        """Run again, it changes no file: not its content, time or mode."""
        first = _make_certs(tmp_path)
        before = _snapshot(tmp_path)
        second = _make_certs(tmp_path)
        assert (0, 0) == (first.returncode, second.returncode)
        assert before == _snapshot(tmp_path)
        assert 9 == len(before)

    def test_missing_leaf_is_issued_again_by_the_same_ca(self, tmp_path: Path) -> None:
        """A lost certificate is issued again; the CA and the other certificates stay."""
        assert 0 == _make_certs(tmp_path).returncode
        before = _snapshot(tmp_path)
        (tmp_path / "services" / "metrics.pem").unlink()
        assert 0 == _make_certs(tmp_path).returncode
        after = _snapshot(tmp_path)
        changed = sorted(name for name in after if after[name] != before.get(name))
        assert ["services/metrics-key.pem", "services/metrics.pem"] == changed
        ca, cert = tmp_path / "ca" / "ca.pem", tmp_path / "services" / "metrics.pem"
        assert 0 == _openssl_verify(ca, cert)[0]

    def test_new_ca_reissues_every_leaf(self, tmp_path: Path) -> None:
        """With the CA gone, a new one signs new leaves (old ones would not verify)."""
        assert 0 == _make_certs(tmp_path).returncode
        old_broker = (tmp_path / "kafka" / "broker.pem").read_bytes()
        (tmp_path / "ca" / "ca-key.pem").unlink()
        assert 0 == _make_certs(tmp_path).returncode
        ca = tmp_path / "ca" / "ca.pem"
        verified = [
            _openssl_verify(ca, tmp_path / cert)[0]
            for cert in ("kafka/broker.pem", "services/metrics.pem")
        ]
        assert ([0, 0], False) == (
            verified,
            old_broker == (tmp_path / "kafka/broker.pem").read_bytes(),
        )

    def test_names_are_settable(self, tmp_path: Path) -> None:
        """BROKER_SANS names the broker's certificate."""
        result = _make_certs(tmp_path, BROKER_SANS="DNS:kafka-0,IP:10.0.0.1")
        assert 0 == result.returncode, result.stderr
        assert {"kafka-0", "10.0.0.1"} == _sans(_certificate(tmp_path / "kafka" / "broker.pem"))

    def test_usage(self) -> None:
        """Without OUT_DIR it says how to call it, and exits 2."""
        result = subprocess.run(
            ["sh", str(MAKE_CERTS)], capture_output=True, text=True, check=False
        )
        assert (2, True) == (result.returncode, "usage:" in result.stderr)


class TestRunScript:
    """deploy/compose/kafka/run.sh, with `java` standing in."""

    def test_default_format_is_unchanged(self, tmp_path: Path) -> None:
        """Without SCRAM_* it formats exactly as before: no --add-scram."""
        start = _run_kafka_script({"KAFKA_NODE_ID": "1"}, tmp_path)
        conf = str(tmp_path / "config" / "server.properties")
        expected = (0, ["format", "-g", "-t", DEFAULT_CLUSTER_ID, "-c", conf], [conf])
        actual = (
            start.returncode,
            start.tool_args("kafka.tools.StorageTool"),
            start.tool_args("kafka.Kafka"),
        )
        assert expected == actual

    def test_every_mechanism_gets_the_user(self, tmp_path: Path) -> None:
        """SCRAM_MECHANISMS lists the mechanisms the user is added for."""
        (tmp_path / "password").write_text("pw-1\n")
        env = {
            "SCRAM_USERNAME": "alice",
            "SCRAM_PASSWORD_FILE": str(tmp_path / "password"),
            "SCRAM_MECHANISMS": "SCRAM-SHA-512,SCRAM-SHA-256",
        }
        args = _run_kafka_script(env, tmp_path).tool_args("kafka.tools.StorageTool")
        scram = [args[i + 1] for i, arg in enumerate(args) if arg == "--add-scram"]
        expected = [
            "SCRAM-SHA-512=[name=alice,password=pw-1]",
            "SCRAM-SHA-256=[name=alice,password=pw-1]",
        ]
        assert expected == scram

    @pytest.mark.parametrize(
        ("env", "says"),
        [
            ({"SCRAM_USERNAME": "alice"}, "SCRAM_USERNAME and SCRAM_PASSWORD_FILE go together"),
            (
                {"SCRAM_USERNAME": "alice", "SCRAM_PASSWORD_FILE": "/nonexistent/password"},
                "make compose-secrets",
            ),
        ],
    )
    def test_incomplete_scram_settings_stop_it(
        self, tmp_path: Path, env: dict[str, str], says: str
    ) -> None:
        """Half the SCRAM settings, or a password file that is not there: exit 2 before any
        java runs, saying what to do."""
        start = _run_kafka_script(env, tmp_path)
        assert (2, True, []) == (start.returncode, says in start.stderr, start.calls)

    def test_password_the_format_cannot_parse_is_refused(self, tmp_path: Path) -> None:
        """A password with characters the [name=...,password=...] syntax cannot quote is
        refused, not cut short."""
        (tmp_path / "password").write_text("a,b=c]\n")
        env = {"SCRAM_USERNAME": "alice", "SCRAM_PASSWORD_FILE": str(tmp_path / "password")}
        start = _run_kafka_script(env, tmp_path)
        assert (2, []) == (start.returncode, start.calls)
        assert "a,b=c]" not in start.stderr

    def test_formatted_volume_keeps_its_users(self, tmp_path: Path) -> None:
        """On a formatted log dir it says the SCRAM users stay as they were, and starts."""
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "meta.properties").write_text("version=1\n")
        (tmp_path / "password").write_text("pw-1\n")
        env = {
            "KAFKA_LOG_DIRS": str(tmp_path / "data"),
            "SCRAM_USERNAME": "alice",
            "SCRAM_PASSWORD_FILE": str(tmp_path / "password"),
        }
        start = _run_kafka_script(env, tmp_path)
        assert (0, True) == (start.returncode, "fresh volume" in start.stderr)


class TestComposeSecretsTarget:
    """`make compose-secrets`, run in an empty directory of its own."""

    @staticmethod
    def _make(directory: Path) -> subprocess.CompletedProcess[str]:
        return run_tool(
            "make", "-s", "-C", str(directory), "-f", str(REPO / "Makefile"), "compose-secrets"
        )

    def test_makes_each_declared_secret(self, resolved: dict[str, Any], tmp_path: Path) -> None:
        """One random password per secret the override declares, in a 0700 directory, each
        in the characters run.sh accepts."""
        result = self._make(tmp_path)
        assert 0 == result.returncode, result.stderr
        directory = tmp_path / "deploy" / "compose" / "secrets"
        passwords = {path.name: path.read_text() for path in directory.iterdir()}
        assert set(resolved["secrets"]) == set(passwords)
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{32,}\n", p) for p in passwords.values())
        assert len(set(passwords.values())) == len(passwords)
        assert 0o700 == stat.S_IMODE(directory.stat().st_mode)

    def test_files_are_readable_by_the_containers_users(self, tmp_path: Path) -> None:
        """0644 (the directory keeps others out): compose mounts the file with its host mode,
        and kafka (uid 1000) and the services (uid 10001) must both read it."""
        assert 0 == self._make(tmp_path).returncode
        directory = tmp_path / "deploy" / "compose" / "secrets"
        modes = {stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
        assert {0o644} == modes

    def test_never_overwrites(self, tmp_path: Path) -> None:
        """A second run, or a password of one's own, is kept as it is."""
        directory = tmp_path / "deploy" / "compose" / "secrets"
        directory.mkdir(parents=True)
        (directory / "sasl_password").write_text("my-own\n")
        assert 0 == self._make(tmp_path).returncode
        before = _snapshot(directory)
        assert 0 == self._make(tmp_path).returncode
        assert ("my-own\n", before) == (
            (directory / "sasl_password").read_text(),
            _snapshot(directory),
        )


# --------------------------------------------------------------------------- a real broker


@dataclass(frozen=True)
class SecureBroker:
    """A broker started from the secure kafka service's configuration, on free ports.

    ``clients`` and ``host`` are the addresses of the CLIENTS and HOST listeners here. The
    services' listener is advertised as localhost instead of kafka (no such name here); the
    broker's certificate is for both.
    """

    clients: str
    host: str
    log: Path


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(kafkactl.free_port())
    return sorted(ports)


def _stop_broker(process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def secure_broker(
    resolved: dict[str, Any],
    certs: Path,
    secrets: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SecureBroker]:
    java = kafkactl.require_java()
    libs = kafkactl.fetch(quiet=True)
    tmp = tmp_path_factory.mktemp("secure-broker")
    env = _kafka_env(resolved, certs, secrets, tmp / "data")
    compose_ports = sorted({port for _, port in _listeners(env["KAFKA_LISTENERS"]).values()})
    ports = dict(zip(compose_ports, _distinct_free_ports(len(compose_ports)), strict=True))
    for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS"):
        env[key] = re.sub(r":(\d+)\b", lambda m: f":{ports.get(int(m[1]), int(m[1]))}", env[key])
    env["KAFKA_ADVERTISED_LISTENERS"] = env["KAFKA_ADVERTISED_LISTENERS"].replace(
        "//kafka:", "//localhost:"
    )
    start = _run_kafka_script(env, tmp)
    assert 0 == start.returncode, start.stderr
    log = tmp / "broker.log"
    log4j = tmp / "log4j2.xml"
    log4j.write_text(kafkactl.log4j2_config(log))
    cp = kafkactl.classpath(libs)
    jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-cp", cp]
    formatted = subprocess.run(
        [*jvm, "kafka.tools.StorageTool", *start.tool_args("kafka.tools.StorageTool")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert 0 == formatted.returncode, formatted.stderr
    process = subprocess.Popen(
        [*jvm[:1], "-Xmx512m", *jvm[1:], "kafka.Kafka", *start.tool_args("kafka.Kafka")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    listeners = _listeners(env["KAFKA_LISTENERS"])
    broker = SecureBroker(
        clients=f"localhost:{listeners['CLIENTS'][1]}",
        host=f"localhost:{listeners['HOST'][1]}",
        log=log,
    )
    try:
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while True:
            assert process.poll() is None, f"the broker exited; see {log}"
            try:
                socket.create_connection(("127.0.0.1", listeners["HOST"][1]), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"the broker did not listen; see {log}"
                time.sleep(0.5)
        yield broker
    finally:
        _stop_broker(process)


class TestSecureBrokerForReal:
    """A real broker from the compose configuration and the files `certs` made."""

    @pytest.mark.parametrize("listener", ["clients", "host"])
    async def test_services_log_in(
        self,
        resolved: dict[str, Any],
        certs: Path,
        secrets: Path,
        secure_broker: SecureBroker,
        listener: str,
    ) -> None:
        """init-topics' settings (as every service's) log in over SASL_SSL with SCRAM-SHA-512
        and get an answer, on the services' listener and on the host's."""
        address = getattr(secure_broker, listener)
        settings = _settings(
            resolved, "init-topics", certs, secrets, bootstrap_servers=address, startup_timeout="60"
        )
        admin = await connect_admin(settings)
        try:
            topics = await admin.list_topics()
        finally:
            await admin.close()
        assert isinstance(topics, list)

    async def test_wrong_password_is_refused(
        self,
        resolved: dict[str, Any],
        certs: Path,
        secrets: Path,
        secure_broker: SecureBroker,
        tmp_path: Path,
    ) -> None:
        """A wrong password ends start-up at once with the broker's refusal."""
        (tmp_path / "wrong").write_text("not-the-password\n")
        settings = _settings(
            resolved,
            "init-topics",
            certs,
            secrets,
            bootstrap_servers=secure_broker.host,
            sasl_password_file=str(tmp_path / "wrong"),
            startup_timeout="60",
        )
        with pytest.raises(SecurityError, match="authentication failed"):
            await connect_admin(settings)
