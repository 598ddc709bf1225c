"""Kafka connection plumbing shared by the services: client options and the admin
connection at start-up.

Before the admin client starts, ``sensorstream.runtime.security`` checks the credentials
with one raw connection, so a refused password or certificate ends start-up at once with
one line instead of being retried until ``--startup-timeout``.

Client errors are translated into the project's tree by ``sensorstream.runtime.errors``
and retried by ``sensorstream.runtime.retry``; nothing here loops by hand.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient

from sensorstream.schema import ConfigError, FatalError, RetriesExhaustedError

from .errors import kafka_errors
from .retry import RetryPolicy, retry
from .security import check_credentials, ssl_context
from .settings import ServiceSettings

__all__ = ["KafkaUnavailableError", "client_options", "connect_admin", "startup_policy"]

log = structlog.get_logger("sensorstream.kafka")


class KafkaUnavailableError(FatalError):
    """The broker could not be reached within the start-up timeout."""


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments common to every aiokafka client of a service."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_list,
        "client_id": f"{settings.service_name}-{settings.instance_id}",
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        # Host names are always verified; there is no opt-out here.
        options["ssl_context"] = ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        if not settings.sasl_username or settings.sasl_password is None:
            raise ConfigError(
                "SASL needs --sasl-username / SENSORSTREAM_SASL_USERNAME and "
                "--sasl-password-file / SENSORSTREAM_SASL_PASSWORD_FILE (or --sasl-password)"
            )
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def startup_policy(settings: ServiceSettings) -> RetryPolicy:
    """Retries at start-up: backoff up to 5 s for ``--startup-timeout`` seconds."""
    return RetryPolicy(budget=settings.startup_timeout, wait_initial=0.25, wait_max=5.0)


async def connect_admin(settings: ServiceSettings) -> AIOKafkaAdminClient:
    """Connect an admin client, retrying an unreachable broker for ``startup_timeout`` s.

    Each failed attempt is logged (``retry_scheduled``); when time runs out a
    :class:`KafkaUnavailableError` says where it tried and which setting to change. A
    broker that refuses our credentials raises ``SecurityError`` at the first attempt.
    """
    options = client_options(settings)

    async def connect() -> AIOKafkaAdminClient:
        await check_credentials(settings, options)
        admin = AIOKafkaAdminClient(**options, request_timeout_ms=5000)
        try:
            with kafka_errors(f"connecting to Kafka at {settings.bootstrap_servers}"):
                await admin.start()
                await admin.describe_cluster()
        except BaseException:
            await _close_quietly(admin)
            raise
        return admin

    try:
        return await retry("connect", connect, policy=startup_policy(settings))
    except RetriesExhaustedError as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap_servers} within "
            f"{settings.startup_timeout:g} s (last error: {exc.__cause__}). Is the broker "
            "running? Set --bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS, or raise "
            "SENSORSTREAM_STARTUP_TIMEOUT."
        ) from exc


async def _close_quietly(admin: AIOKafkaAdminClient) -> None:
    try:
        await admin.close()
    except Exception:  # closing a client that never connected may fail in any way
        log.debug("admin_close_failed", exc_info=True)
