"""The local secure broker's certificates: a CA of its own, a broker and a client certificate.

``kafkactl start --security sasl_ssl`` calls ``ensure_local_pki`` once per data dir; tests
call ``create_ca`` and ``issue_certificate`` for the certificates a broker must refuse (an
expired one, one from another CA, a server certificate for other names).

Everything is PEM that both sides load as it is: keys are PKCS#8 (Kafka's PEM key store
reads no other kind, Python's ``ssl.SSLContext.load_cert_chain`` reads it too), and every
file holding a key is created with mode 0600, never widened afterwards. The broker's key is
stored unencrypted, beside its certificate chain in one PEM key store file, so that
``server.properties`` holds no key password; the client's key is encrypted with a random
password kept in its own 0600 file, as a real client's would be.

Nothing here is ever committed: the files live under ``<data-dir>/security/`` and are made
at start-up. This module needs ``cryptography``, so kafkactl imports it only when security
is asked for (the plaintext broker must keep running on the standard library alone).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CertificateAuthority",
    "IssuedCertificate",
    "PkiLayout",
    "create_ca",
    "ensure_local_pki",
    "issue_certificate",
    "load_ca",
    "write_pem_keystore",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
ORGANIZATION = "Sensorstream local broker"
# Long enough that a developer's data dir never outlives them; the CA outlives its leaves.
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)
# Certificates start a little in the past: a JVM and a Python process on the same host may
# read the clock a moment apart, and "not yet valid" is a confusing first error.
CLOCK_SKEW = datetime.timedelta(minutes=5)
BROKER_SANS = ("localhost", "127.0.0.1")
SECRET_FILE_MODE = 0o600
SECURITY_DIR_MODE = 0o700


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's certificate and key, and the files they were read from or written to."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    certfile: Path
    keyfile: Path


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate signed by a CA, written as ``certfile`` (PEM) and ``keyfile`` (PKCS#8)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    certfile: Path
    keyfile: Path
    issuer: CertificateAuthority


class PkiLayout(Protocol):
    """Where ``ensure_local_pki`` puts each file (kafkactl's ``SecurityFiles``)."""

    @property
    def directory(self) -> Path: ...
    @property
    def ca_file(self) -> Path: ...
    @property
    def ca_key_file(self) -> Path: ...
    @property
    def broker_keystore_file(self) -> Path: ...
    @property
    def client_certfile(self) -> Path: ...
    @property
    def client_keyfile(self) -> Path: ...
    @property
    def client_key_password_file(self) -> Path: ...


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: a key in a millisecond (RSA takes ~100 ms), and both the JVM and OpenSSL take it.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, also if ``path`` existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), SECRET_FILE_MODE)  # O_CREAT's mode does not apply to old files
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption
    if password is None:
        encryption = serialization.NoEncryption()
    else:
        raw = password.encode() if isinstance(password, str) else password
        encryption = serialization.BestAvailableEncryption(raw)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _subject_alternative_names(sans: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return x509.SubjectAlternativeName(names)


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, name: str, not_valid_after: datetime.datetime | None
) -> x509.Certificate:
    now = _now()
    subject = _name(name)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_valid_after or now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def create_ca(
    out_dir: Path,
    name: str = "Sensorstream local CA",
    *,
    not_valid_after: datetime.datetime | None = None,
) -> CertificateAuthority:
    """Make a new CA called ``name``, written as ``out_dir/ca.pem`` and ``out_dir/ca.key``.

    ``out_dir`` is created (mode 0700) if missing; existing files there are replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(mode=SECURITY_DIR_MODE, parents=True, exist_ok=True)
    return _write_ca(out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE, name, not_valid_after)


def _write_ca(
    certfile: Path, keyfile: Path, name: str, not_valid_after: datetime.datetime | None = None
) -> CertificateAuthority:
    key = _new_key()
    certificate = _ca_certificate(key, name, not_valid_after)
    _write_secret(keyfile, _key_pem(key, None))
    certfile.write_bytes(_cert_pem(certificate))
    return CertificateAuthority(
        certificate=certificate, key=key, certfile=certfile, keyfile=keyfile
    )


def load_ca(ca_dir: Path) -> CertificateAuthority:
    """The CA in ``ca_dir`` (its ``ca.pem`` and ``ca.key``, e.g. a secure data dir's)."""
    certfile, keyfile = Path(ca_dir) / CA_CERT_FILE, Path(ca_dir) / CA_KEY_FILE
    certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{keyfile} is not an EC key, so not one of ours")
    return CertificateAuthority(
        certificate=certificate, key=key, certfile=certfile, keyfile=keyfile
    )


def issue_certificate(
    ca: CertificateAuthority | Path,
    out_dir: Path,
    name: str,
    *,
    client: bool,
    sans: Sequence[str] = (),
    not_valid_before: datetime.datetime | None = None,
    not_valid_after: datetime.datetime | None = None,
    key_password: str | bytes | None = None,
) -> IssuedCertificate:
    """Sign a certificate for ``name`` with ``ca`` (a CA, or a dir holding ``ca.pem``/``ca.key``).

    Written as ``out_dir/<name>.pem`` and ``out_dir/<name>.key`` (PKCS#8, encrypted with
    ``key_password`` if given). ``client`` chooses the extended key usage (clientAuth, else
    serverAuth); ``sans`` are host names or IP addresses. The validity defaults to now
    (less a few minutes of clock skew) until ``LEAF_VALIDITY`` from now; an expired
    certificate is ``not_valid_after`` in the past.
    """
    authority = ca if isinstance(ca, CertificateAuthority) else load_ca(ca)
    out_dir = Path(out_dir)
    out_dir.mkdir(mode=SECURITY_DIR_MODE, parents=True, exist_ok=True)
    now = _now()
    ends = not_valid_after or now + LEAF_VALIDITY
    starts = not_valid_before or min(now - CLOCK_SKEW, ends - datetime.timedelta(days=1))
    key = _new_key()
    public_key = key.public_key()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(starts)
        .not_valid_after(ends)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(_subject_alternative_names(sans), critical=False)
    certificate = builder.sign(authority.key, hashes.SHA256())
    certfile, keyfile = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _write_secret(keyfile, _key_pem(key, key_password))
    certfile.write_bytes(_cert_pem(certificate))
    return IssuedCertificate(
        certificate=certificate, key=key, certfile=certfile, keyfile=keyfile, issuer=authority
    )


def write_pem_keystore(issued: IssuedCertificate, path: Path) -> None:
    """One PEM file with the unencrypted PKCS#8 key and the chain, as Kafka's PEM key store wants.

    Kafka 4 reads an unencrypted key without ``ssl.key.password``; the chain ends with the
    CA so a client that trusts only the CA can still build it.
    """
    chain = _cert_pem(issued.certificate) + _cert_pem(issued.issuer.certificate)
    _write_secret(path, _key_pem(issued.key, None) + chain)


def ensure_local_pki(layout: PkiLayout) -> bool:
    """Make the CA, broker key store and client certificate of ``layout``, unless all exist.

    Made once per data dir and reused on restart, so clients that were handed the CA
    keep trusting the broker. A set left incomplete (a start killed half-way) is made
    anew as a whole, so the broker and client certificates always share one CA.
    Returns True if it made them.
    """
    wanted = (
        layout.ca_file,
        layout.ca_key_file,
        layout.broker_keystore_file,
        layout.client_certfile,
        layout.client_keyfile,
        layout.client_key_password_file,
    )
    if all(path.exists() for path in wanted):
        return False
    directory = layout.directory
    directory.mkdir(mode=SECURITY_DIR_MODE, parents=True, exist_ok=True)
    ca = _write_ca(layout.ca_file, layout.ca_key_file, "Sensorstream local CA")
    broker = issue_certificate(ca, directory, "broker", client=False, sans=BROKER_SANS)
    write_pem_keystore(broker, layout.broker_keystore_file)
    client_password = secrets.token_urlsafe(24)
    client = issue_certificate(ca, directory, "client", client=True, key_password=client_password)
    client.certfile.replace(layout.client_certfile)
    client.keyfile.replace(layout.client_keyfile)
    _write_secret(layout.client_key_password_file, client_password.encode())
    return True
