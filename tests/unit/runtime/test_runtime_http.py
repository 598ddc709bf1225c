"""Specification of the observability HTTP server (sensorstream.runtime.http)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from sensorstream.runtime import ConfigError, ObservabilityServer, ServiceSettings, load_settings

ENDPOINTS = ["/metrics", "/healthz", "/readyz"]
USER = "prometheus"
PASSWORD = "s3cret-pa55"
CHALLENGE = 'Basic realm="sensorstream"'


class MetricsSettings(ServiceSettings):
    service_name: ClassVar[str] = "sensorstream-http-test"


@dataclass(frozen=True)
class Certificates:
    """A test CA, and a server certificate for 127.0.0.1 and localhost it signed."""

    ca: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue_certificates(directory: Path) -> Certificates:
    """Write ca.pem, server.pem and server-key.pem to ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensorstream test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
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
    paths.key.write_bytes(_pem_key(key))
    return paths


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def trusting(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificates.ca)


def server_context(certificates: Certificates) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    return context


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("sensorstream_test_things_total", "Things.", registry=registry).inc(3)
    return registry


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return issue_certificates(tmp_path)


@asynccontextmanager
async def serving(server: ObservabilityServer, scheme: str = "http") -> AsyncIterator[str]:
    """Start ``server`` and yield its base URL; stop it afterwards."""
    await server.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.bound_port}"
    finally:
        await server.stop()


async def statuses(
    base: str,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, int]:
    """The status of each endpoint for one request with ``headers``."""
    found = {}
    async with aiohttp.ClientSession() as session:
        for path in ENDPOINTS:
            kwargs = {"ssl": ssl_context} if ssl_context is not None else {}
            async with session.get(f"{base}{path}", headers=headers, **kwargs) as response:
                found[path] = response.status
    return found


class TestObservabilityServer:
    async def test_serves_metrics_health_and_readiness(self, registry: CollectorRegistry) -> None:
        """/metrics has the registry, /healthz is 200, /readyz follows the check."""
        ready = {"value": False}
        server = ObservabilityServer(
            host="127.0.0.1",
            port=0,
            readiness=lambda: (ready["value"], {"why": "test"}),
            registry=registry,
        )
        await server.start()
        base = f"http://127.0.0.1:{server.bound_port}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/metrics") as response:
                    metrics = await response.text()
                async with session.get(f"{base}/healthz") as response:
                    health = response.status
                async with session.get(f"{base}/readyz") as response:
                    not_ready = (response.status, await response.json())
                ready["value"] = True
                async with session.get(f"{base}/readyz") as response:
                    now_ready = response.status
        finally:
            await server.stop()

        assert "sensorstream_test_things_total 3.0" in metrics
        assert 200 == health
        assert (503, {"ready": False, "why": "test"}) == not_ready
        assert 200 == now_ready

    async def test_port_in_use_is_a_config_error_naming_the_setting(self) -> None:
        """A taken port is reported as a bad --metrics-port, not a traceback."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = ObservabilityServer(host="127.0.0.1", port=port, readiness=lambda: (True, {}))

            with pytest.raises(ConfigError, match="SENSORSTREAM_METRICS_PORT"):
                await server.start()


class TestBasicAuth:
    @pytest.fixture
    def server(self, registry: CollectorRegistry) -> ObservabilityServer:
        return ObservabilityServer(
            host="127.0.0.1",
            port=0,
            readiness=lambda: (True, {}),
            registry=registry,
            auth=(USER, SecretStr(PASSWORD)),
        )

    async def test_right_credentials_reach_every_endpoint(
        self, server: ObservabilityServer
    ) -> None:
        """The right user and password get 200 from /metrics, /healthz and /readyz."""
        async with serving(server) as base:
            actual = await statuses(base, basic(USER, PASSWORD))
        assert dict.fromkeys(ENDPOINTS, 200) == actual

    async def test_metrics_body_is_served_to_the_right_credentials(
        self, server: ObservabilityServer
    ) -> None:
        """Behind auth, /metrics still is the registry in the text format."""
        async with (
            serving(server) as base,
            aiohttp.ClientSession() as session,
            session.get(f"{base}/metrics", headers=basic(USER, PASSWORD)) as response,
        ):
            body = await response.text()
        assert "sensorstream_test_things_total 3.0" in body

    async def test_no_credentials_is_401_with_the_challenge(
        self, server: ObservabilityServer
    ) -> None:
        """Without an Authorization header every endpoint answers 401 and names the realm."""
        found = []
        async with serving(server) as base, aiohttp.ClientSession() as session:
            for path in ENDPOINTS:
                async with session.get(f"{base}{path}") as response:
                    found.append((path, response.status, response.headers.get("WWW-Authenticate")))
        assert [(path, 401, CHALLENGE) for path in ENDPOINTS] == found

    @pytest.mark.parametrize(
        ("user", "password"),
        [
            (USER, "wrong"),
            ("intruder", PASSWORD),
            (USER, PASSWORD + "x"),
            (USER, PASSWORD[:-1]),
            (USER, ""),
            ("", PASSWORD),
        ],
        ids=["wrong-password", "wrong-user", "longer", "prefix", "no-password", "no-user"],
    )
    async def test_wrong_credentials_are_401(
        self, server: ObservabilityServer, user: str, password: str
    ) -> None:
        """A wrong user or a wrong password (even a prefix of the right one) is refused."""
        async with serving(server) as base:
            actual = await statuses(base, basic(user, password))
        assert dict.fromkeys(ENDPOINTS, 401) == actual

    @pytest.mark.parametrize(
        "header",
        [
            "",
            "Basic",
            "Basic ",
            "Basic !!!not-base64!!!",
            "Basic cHJvbWV0aGV1cw",  # truncated base64 (bad padding)
            "Basic " + base64.b64encode(USER.encode() + PASSWORD.encode()).decode(),  # no colon
            "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),  # not UTF-8
            "Basic ünïcödé",
            "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
            "Digest username=prometheus",
        ],
    )
    async def test_malformed_header_is_401_not_500(
        self, server: ObservabilityServer, header: str
    ) -> None:
        """An Authorization header that is not basic auth is refused like a wrong one."""
        async with serving(server) as base:
            actual = await statuses(base, {"Authorization": header})
        assert dict.fromkeys(ENDPOINTS, 401) == actual

    async def test_scheme_is_case_insensitive(self, server: ObservabilityServer) -> None:
        """`basic` is the same scheme as `Basic` (RFC 7617)."""
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        async with serving(server) as base:
            actual = await statuses(base, {"Authorization": f"basic {token}"})
        assert dict.fromkeys(ENDPOINTS, 200) == actual

    async def test_auth_off_serves_everyone(self, registry: CollectorRegistry) -> None:
        """Without auth every endpoint answers 200, credentials or not."""
        server = ObservabilityServer(
            host="127.0.0.1", port=0, readiness=lambda: (True, {}), registry=registry
        )
        async with serving(server) as base:
            actual = (await statuses(base), await statuses(base, basic("any", "thing")))
        assert (dict.fromkeys(ENDPOINTS, 200), dict.fromkeys(ENDPOINTS, 200)) == actual


class TestTls:
    @pytest.fixture
    def server(
        self, registry: CollectorRegistry, certificates: Certificates
    ) -> ObservabilityServer:
        return ObservabilityServer(
            host="127.0.0.1",
            port=0,
            readiness=lambda: (True, {}),
            registry=registry,
            ssl_context=server_context(certificates),
        )

    async def test_client_trusting_the_ca_gets_200(
        self, server: ObservabilityServer, certificates: Certificates
    ) -> None:
        """Over HTTPS, a client that trusts the CA (and checks the host name) gets 200."""
        async with serving(server, "https") as base:
            actual = await statuses(base, ssl_context=trusting(certificates))
        assert dict.fromkeys(ENDPOINTS, 200) == actual

    async def test_plain_http_to_the_tls_port_fails(self, server: ObservabilityServer) -> None:
        """The TLS port does not answer plain HTTP."""
        async with serving(server) as base, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{base}/metrics") as response:
                    await response.read()

    async def test_client_not_trusting_the_ca_is_refused(self, server: ObservabilityServer) -> None:
        """A client that checks certificates against the system CAs rejects the handshake."""
        async with serving(server, "https") as base, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"{base}/metrics", ssl=ssl.create_default_context()):
                    pass


class TestFromSettings:
    async def test_wires_address_auth_and_tls(
        self, registry: CollectorRegistry, certificates: Certificates, tmp_path: Path
    ) -> None:
        """The flags (the password from --metrics-auth-password-file) give an HTTPS server
        on --metrics-host/--metrics-port that wants those credentials."""
        password_file = tmp_path / "metrics-password"
        password_file.write_text(PASSWORD + "\n")
        port = _free_port()
        settings = load_settings(
            MetricsSettings,
            [
                "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                "--metrics-auth-username", USER,
                "--metrics-auth-password-file", str(password_file),
                "--metrics-tls-certfile", str(certificates.cert),
                "--metrics-tls-keyfile", str(certificates.key),
            ],
        )  # fmt: skip
        server = ObservabilityServer.from_settings(
            settings, readiness=lambda: (False, {"state": "starting"}), registry=registry
        )
        context = trusting(certificates)
        async with serving(server, "https") as base, aiohttp.ClientSession() as session:
            refused = await statuses(base, ssl_context=context)
            allowed = await statuses(base, basic(USER, PASSWORD), ssl_context=context)
            async with session.get(
                f"{base}/metrics", ssl=context, headers=basic(USER, PASSWORD)
            ) as response:
                metrics = await response.text()

        assert (
            port,
            dict.fromkeys(ENDPOINTS, 401),
            {"/metrics": 200, "/healthz": 200, "/readyz": 503},
            True,
        ) == (server.bound_port, refused, allowed, "sensorstream_test_things_total 3.0" in metrics)

    async def test_defaults_are_plain_http_without_auth(self, registry: CollectorRegistry) -> None:
        """Without the auth and TLS settings the server is plain HTTP and open, as before."""
        settings = load_settings(MetricsSettings, ["--metrics-port", "0"])
        server = ObservabilityServer.from_settings(
            settings, readiness=lambda: (True, {}), registry=registry
        )
        async with serving(server) as base:
            actual = await statuses(base)
        assert ("127.0.0.1", dict.fromkeys(ENDPOINTS, 200)) == (settings.metrics_host, actual)

    @pytest.mark.parametrize("broken", ["garbage-cert", "mismatched-key", "vanished-cert"])
    def test_unloadable_certificate_is_a_config_error_naming_the_flags(
        self, certificates: Certificates, tmp_path: Path, broken: str
    ) -> None:
        """A certificate or key that cannot be loaded is a one-line ConfigError naming
        --metrics-tls-certfile / SENSORSTREAM_METRICS_TLS_CERTFILE (and the key's flag)."""
        cert, key = certificates.cert, certificates.key
        if broken == "garbage-cert":
            cert = tmp_path / "not-a-cert.pem"
            cert.write_text("this is not a certificate\n")
        elif broken == "mismatched-key":
            key = tmp_path / "other-key.pem"
            key.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
        settings = MetricsSettings(metrics_tls_certfile=cert, metrics_tls_keyfile=key)
        if broken == "vanished-cert":
            cert.unlink()  # checked by the settings, gone by the time the server starts

        with pytest.raises(ConfigError) as exc_info:
            ObservabilityServer.from_settings(settings, readiness=lambda: (True, {}))

        message = str(exc_info.value)
        assert (True, True, 1) == (
            "--metrics-tls-certfile / SENSORSTREAM_METRICS_TLS_CERTFILE" in message,
            "--metrics-tls-keyfile / SENSORSTREAM_METRICS_TLS_KEYFILE" in message,
            len(message.splitlines()),
        ), message


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
