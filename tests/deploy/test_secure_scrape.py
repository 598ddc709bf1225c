"""A real Prometheus scrapes a service that protects its endpoints with basic auth and TLS.

The service is a real ``sensorstream-processor`` process pointed at a Kafka address where
nothing listens: it serves ``/metrics`` while it retries its start-up, which is all this
needs. It runs with the settings of docs/security.md (user, password file, certificate
and key, all through ``SENSORSTREAM_METRICS_*``); Prometheus scrapes it with a config in
the shape of deploy/prometheus/prometheus-secure.yml (``basic_auth.password_file``,
``scheme: https``, ``tls_config.ca_file`` and ``server_name``), once with the right
password and once with a wrong one.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kafkactl
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy_helpers import require_binary

HOST = "127.0.0.1"
USER = "prometheus"
PASSWORD = "correct horse battery staple"
JOB = "sensorstream-processor"
WRONG_JOB = "sensorstream-processor-wrong-password"
START_TIMEOUT = 60.0
SCRAPE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _issue_certificates(directory: Path) -> Certificates:
    """A CA, and a certificate for localhost and 127.0.0.1 that it signed (PEM files)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensorstream test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(
        ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server-key.pem"
    )
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(kafkactl.free_port())
    return sorted(ports)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM; a second one if it is still up (a service still retrying its start-up
    waits for its broker first; the second signal means now); SIGKILL as the last resort."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        if process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def _status(url: str, context: ssl.SSLContext, **headers: str) -> tuple[int, str | None]:
    """(status, WWW-Authenticate) of a GET; raises OSError if nothing answers."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate")


def _api(base: str, path: str, **params: str) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def _job(name: str, target: str, password_file: Path, ca: Path) -> dict[str, Any]:
    """A scrape job in the shape of deploy/prometheus/prometheus-secure.yml's."""
    return {
        "job_name": name,
        "scheme": "https",
        "basic_auth": {"username": USER, "password_file": str(password_file)},
        "tls_config": {"ca_file": str(ca), "server_name": "localhost"},
        "static_configs": [{"targets": [target]}],
    }


@dataclass
class SecureScrape:
    """What the fixture started: the service's URL, Prometheus's URL, their logs."""

    service_url: str
    prometheus_url: str
    ca: Path
    logs: list[Path]

    def output(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in self.logs
        )


@pytest.fixture(scope="module")
def secure_scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureScrape]:
    """A protected processor and a Prometheus scraping it; both stopped at the end."""
    prometheus = require_binary("prometheus")
    directory = tmp_path_factory.mktemp("secure-scrape")
    certificates = _issue_certificates(directory)
    password_file = directory / "metrics_password"
    password_file.write_text(PASSWORD + "\n")
    wrong_password_file = directory / "wrong_password"
    wrong_password_file.write_text("not the password\n")
    kafka_port, metrics_port, prometheus_port = _distinct_ports(3)
    target = f"{HOST}:{metrics_port}"
    config = directory / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    _job(JOB, target, password_file, certificates.ca),
                    _job(WRONG_JOB, target, wrong_password_file, certificates.ca),
                ],
            }
        )
    )
    service_log = directory / "processor.log"
    prometheus_log = directory / "prometheus.log"
    env = {
        **os.environ,
        "SENSORSTREAM_METRICS_AUTH_USERNAME": USER,
        "SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE": str(password_file),
        "SENSORSTREAM_METRICS_TLS_CERTFILE": str(certificates.cert),
        "SENSORSTREAM_METRICS_TLS_KEYFILE": str(certificates.key),
    }
    processes: list[subprocess.Popen[bytes]] = []
    scrape = SecureScrape(
        service_url=f"https://{target}",
        prometheus_url=f"http://{HOST}:{prometheus_port}",
        ca=certificates.ca,
        logs=[service_log, prometheus_log],
    )
    try:
        processor = [
            str(Path(sys.executable).parent / "sensorstream-processor"),
            "--bootstrap-servers", f"{HOST}:{kafka_port}",  # nothing listens there
            "--startup-timeout", "600",
            "--metrics-host", HOST, "--metrics-port", str(metrics_port),
            "--log-format", "json", "--log-level", "warning",
        ]  # fmt: skip
        server = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'prometheus-data'}",
            f"--web.listen-address={HOST}:{prometheus_port}",
            "--log.level=warn",
        ]
        for argv, log, process_env in (
            (processor, service_log, env),
            (server, prometheus_log, None),
        ):
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        argv,
                        env=process_env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        cwd=directory,
                    )
                )
        context = ssl.create_default_context(cafile=certificates.ca)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            exited = [p.args[0] for p in processes if p.poll() is not None]
            if exited:
                pytest.fail(f"{exited} exited early:\n{scrape.output()}")
            try:
                _status(f"{scrape.service_url}/healthz", context)
                _api(scrape.prometheus_url, "/api/v1/status/buildinfo")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the processor or Prometheus did not come up:\n{scrape.output()}")
                time.sleep(0.3)
        yield scrape
    finally:
        for process in reversed(processes):
            _stop(process)


def _targets(base: str) -> dict[str, dict[str, Any]]:
    """Prometheus's active targets by job, once each has been scraped at least once."""
    targets = _api(base, "/api/v1/targets", state="active")["data"]["activeTargets"]
    return {t["labels"]["job"]: t for t in targets if t["health"] != "unknown"}


def _up(base: str) -> dict[str, str]:
    result = _api(base, "/api/v1/query", query="up")["data"]["result"]
    return {r["metric"]["job"]: r["value"][1] for r in result}


class TestSecureScrape:
    def test_no_credentials_are_refused(self, secure_scrape: SecureScrape) -> None:
        """The processor's /metrics answers 401 with the realm to a request without
        credentials, and 200 to the configured user and password."""
        context = ssl.create_default_context(cafile=secure_scrape.ca)
        url = f"{secure_scrape.service_url}/metrics"
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        actual = (_status(url, context), _status(url, context, Authorization=f"Basic {token}"))
        assert ((401, 'Basic realm="sensorstream"'), (200, None)) == actual

    def test_prometheus_scrapes_with_the_password_file_and_not_without(
        self, secure_scrape: SecureScrape
    ) -> None:
        """Prometheus (basic_auth.password_file, https, tls_config.ca_file) scrapes the
        processor: up is 1 and its metrics arrive; with a wrong password up is 0 (401)."""
        base = secure_scrape.prometheus_url
        deadline = time.monotonic() + SCRAPE_TIMEOUT
        up: dict[str, str] = {}
        while time.monotonic() < deadline:
            up = _up(base)
            if up.get(JOB) == "1" and WRONG_JOB in up:
                break
            time.sleep(0.5)
        targets = _targets(base)
        build_info = _api(
            base, "/api/v1/query", query=f'sensorstream_processor_build_info{{job="{JOB}"}}'
        )["data"]["result"]
        actual = (
            up.get(JOB),
            up.get(WRONG_JOB),
            "401" in targets.get(WRONG_JOB, {}).get("lastError", ""),
            [r["value"][1] for r in build_info],
        )
        assert ("1", "0", True, ["1"]) == actual, (targets, secure_scrape.output())
