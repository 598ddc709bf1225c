"""Who we are to the broker, and one clear line when it does not believe us.

:func:`ssl_context` builds the TLS side of every client from the settings (the CA to
trust, the client certificate for mutual TLS); host names are always checked.

:func:`check_credentials` opens one raw connection to the bootstrap servers before any
client starts, and turns a refusal into a :class:`~sensorstream.schema.SecurityError`
that says what was refused and which setting to check. aiokafka's clients would retry
such a refusal until the start-up timeout and then report only that they could not
bootstrap (the cause is logged, not raised), so the cause is read here, where it is
still attached: a TLS handshake raises it directly, a SASL exchange raises the broker's
error, and a broker that drops the connection after the handshake (a refused client
certificate under TLS 1.3) leaves the alert as the ``__cause__`` of aiokafka's
connection error.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import errors as kafka
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

from sensorstream.schema import ConfigError, RetriableError, SecurityError

from .settings import ServiceSettings

__all__ = ["check_credentials", "describe_refusal", "ssl_context"]

# OpenSSL's X509_V_ERR_* codes that mean "a certificate for another host".
_HOSTNAME_MISMATCH = frozenset({62, 64})  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_CERT_HAS_EXPIRED = 10
_CERT_NOT_YET_VALID = 9
_PROBE_TIMEOUT_MS = 5000
_RESETS = 3


def ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    """The TLS context of every Kafka client: ``--ssl-cafile`` (else the system's CAs),
    host names checked, and the client certificate when mutual TLS is configured."""
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot use --ssl-cafile / SENSORSTREAM_SSL_CAFILE {cafile}: it holds no PEM "
            f"certificate ({exc.reason or exc})"
        ) from exc
    if settings.ssl_certfile is not None:
        password = settings.ssl_key_password
        try:
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                password=password.get_secret_value() if password is not None else None,
            )
        except ssl.SSLError as exc:
            raise ConfigError(
                f"cannot load the client certificate --ssl-certfile {settings.ssl_certfile} "
                f"with --ssl-keyfile {settings.ssl_keyfile} ({exc.reason or exc}): wrong "
                "--ssl-key-password-file / SENSORSTREAM_SSL_KEY_PASSWORD_FILE, or a key "
                "that is not the certificate's"
            ) from exc
    return context


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes and contexts, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_refusal(exc: BaseException, settings: ServiceSettings, address: str) -> str | None:
    """One line saying why the broker at ``address`` and we refused each other, naming
    the setting to check; ``None`` when ``exc`` is no refusal (the broker is away)."""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _broker_certificate(cause, settings, address)
        if isinstance(cause, ssl.SSLError):
            return _tls_refusal(cause, settings, address)
        if isinstance(cause, kafka.UnsupportedSaslMechanismError):
            return (
                f"authentication failed: the broker at {address} does not accept "
                f"--sasl-mechanism {settings.sasl_mechanism} ({cause}); set "
                "--sasl-mechanism / SENSORSTREAM_SASL_MECHANISM to one it offers"
            )
        if isinstance(
            cause,
            kafka.SaslAuthenticationFailed
            | kafka.AuthenticationFailedError
            | kafka.IllegalSaslStateError
            | kafka.AuthenticationMethodNotSupported,
        ):
            return (
                f"authentication failed: the broker at {address} refused user "
                f"{settings.sasl_username!r} with {settings.sasl_mechanism} (wrong password "
                "or unknown user); check --sasl-username / SENSORSTREAM_SASL_USERNAME and "
                "--sasl-password-file / SENSORSTREAM_SASL_PASSWORD_FILE"
            )
    return None


def _broker_certificate(
    exc: ssl.SSLCertVerificationError, settings: ServiceSettings, address: str
) -> str:
    detail = exc.verify_message or exc.reason or str(exc)
    if exc.verify_code in _HOSTNAME_MISMATCH:
        return (
            f"host name mismatch: the certificate of the broker at {address} is not for that "
            f"name ({detail}); connect by a name the certificate lists "
            "(--bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS)"
        )
    if exc.verify_code in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID):
        return (
            f"certificate not valid now: the broker at {address} presented a certificate "
            f"outside its validity ({detail}); renew the broker's certificate"
        )
    trusted = settings.ssl_cafile or "the system's CA store"
    return (
        f"certificate not trusted: the broker at {address} presented a certificate that "
        f"no CA in {trusted} signed ({detail}); check --ssl-cafile / SENSORSTREAM_SSL_CAFILE"
    )


def _tls_refusal(exc: ssl.SSLError, settings: ServiceSettings, address: str) -> str | None:
    reason = (exc.reason or "").upper()
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (
            f"no TLS at {address}: the listener there does not speak TLS; check "
            "--security-protocol / SENSORSTREAM_SECURITY_PROTOCOL and the port in "
            "--bootstrap-servers"
        )
    if "ALERT" not in reason:
        return None  # a TLS error we cannot attribute: treat it like a broken connection
    alert = reason.removeprefix("SSLV3_ALERT_").removeprefix("TLSV13_ALERT_")
    alert = alert.removeprefix("TLSV1_ALERT_").lower().replace("_", " ")
    if settings.ssl_certfile is None:
        return (
            f"client certificate required: the broker at {address} refused the TLS "
            f"connection ({alert}); set --ssl-certfile / SENSORSTREAM_SSL_CERTFILE and "
            "--ssl-keyfile / SENSORSTREAM_SSL_KEYFILE"
        )
    # The broker's alert does not say which (Java sends "certificate unknown" for both).
    why = (
        "it has expired"
        if "EXPIRED" in reason
        else "expired, not yet valid, or signed by a CA the broker does not trust"
    )
    return (
        f"client certificate refused: the broker at {address} refused "
        f"{settings.ssl_certfile} ({alert}: {why}); check --ssl-certfile / "
        "SENSORSTREAM_SSL_CERTFILE"
    )


async def check_credentials(settings: ServiceSettings, options: dict[str, object]) -> None:
    """Connect to the bootstrap servers once with ``options`` (a client's TLS and SASL
    settings) and return when one of them accepted us. A refusal raises
    :class:`SecurityError` at once; a broker that is away raises :class:`RetriableError`.
    Plaintext without SASL has nothing to refuse and returns at once.

    A refused connection leaves aiokafka's internal futures holding the TLS error, which
    asyncio reports as "Future exception was never retrieved", with a traceback, when
    they are collected. They are collected here, with that report silenced, so a refusal
    stays one line."""
    if settings.security_protocol == "PLAINTEXT":
        return
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_quiet_about_abandoned_connections(previous))
    try:
        refusal, last = await _first_answer(settings, options)
    finally:
        gc.collect()
        loop.set_exception_handler(previous)
    # Raised outside the except blocks that saw the errors, so nothing keeps the failed
    # connections (and their futures) alive after the collection above.
    if refusal is not None:
        raise SecurityError(refusal)
    if last is not None:
        raise RetriableError(f"connecting to Kafka at {settings.bootstrap_servers} failed: {last}")


async def _first_answer(
    settings: ServiceSettings, options: dict[str, object]
) -> tuple[str | None, str | None]:
    """(the refusal, None), (None, the last error of an absent broker), or (None, None)
    when a server accepted us."""
    last = None
    for server in settings.bootstrap_list:
        try:
            await _connect_once(settings, options, server)
        except SecurityError as exc:
            return str(exc), None
        except (OSError, EOFError, kafka.KafkaError) as exc:
            refusal = describe_refusal(exc, settings, server)
            if refusal is not None:
                return refusal, None
            last = str(exc) or type(exc).__name__
            continue
        return None, None
    return None, last


def _quiet_about_abandoned_connections(
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]:
    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> object:
        abandoned = context.get("message") == "Future exception was never retrieved"
        if abandoned and isinstance(context.get("exception"), OSError | EOFError):
            return None
        if previous is not None:
            return previous(loop, context)
        loop.default_exception_handler(context)
        return None

    return handler


async def _connect_once(settings: ServiceSettings, options: dict[str, object], server: str) -> None:
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    resets = 0
    while True:
        try:
            conn = await create_conn(
                host,
                int(port),
                client_id=str(options.get("client_id", "sensorstream")),
                request_timeout_ms=_PROBE_TIMEOUT_MS,
                ssl_context=options.get("ssl_context"),
                security_protocol=settings.security_protocol,
                sasl_mechanism=settings.sasl_mechanism,
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
        except ConnectionResetError as exc:
            # A plaintext listener drops a TLS ClientHello (it reads it as an oversized
            # request) with a reset, before any TLS alert. One reset may be a broker going
            # down; the same answer every time is a listener that does not speak TLS.
            resets += 1
            if resets < _RESETS:
                await asyncio.sleep(0.2)
                continue
            if settings.security_protocol not in ("SSL", "SASL_SSL"):
                raise
            raise SecurityError(
                f"no TLS at {server}: the listener reset the connection during the TLS "
                f"handshake {_RESETS} times in a row, as a plaintext listener does; check "
                "--security-protocol / SENSORSTREAM_SECURITY_PROTOCOL and the port in "
                "--bootstrap-servers"
            ) from exc
        conn.close()
        return
