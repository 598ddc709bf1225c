"""Kafka connection plumbing shared by the services: client options, start-up
retries and topic creation.

aiokafka errors are translated here, at the boundary, into the project's own
tree (:class:`RetriableError`, :class:`FatalError`) with ``raise ... from exc``,
so service code never matches on client internals.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context

from sensorstream.schema import ConfigError, FatalError

from .settings import ServiceSettings

__all__ = [
    "KafkaUnavailableError",
    "TopicLayout",
    "client_options",
    "connect_admin",
    "ensure_topic",
]

log = structlog.get_logger("sensorstream.kafka")


class KafkaUnavailableError(FatalError):
    """The broker could not be reached within the start-up timeout."""


class TopicLayout:
    """The partition count and replication factor a topic was found or created with."""

    __slots__ = ("created", "name", "partitions", "replication_factor")

    def __init__(self, name: str, partitions: int, replication_factor: int, created: bool) -> None:
        self.name = name
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.created = created


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments common to every aiokafka client of a service."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_list,
        "client_id": f"{settings.service_name}-{settings.instance_id}",
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        # create_ssl_context always verifies host names; there is no opt-out here.
        options["ssl_context"] = create_ssl_context(cafile=settings.ssl_cafile)
    if settings.security_protocol.startswith("SASL"):
        if not settings.sasl_username or settings.sasl_password is None:
            raise ConfigError(
                "SASL needs --sasl-username / SENSORSTREAM_SASL_USERNAME and "
                "--sasl-password / SENSORSTREAM_SASL_PASSWORD"
            )
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


async def connect_admin(settings: ServiceSettings) -> AIOKafkaAdminClient:
    """Connect an admin client, retrying with backoff for ``startup_timeout`` seconds.

    Each failed attempt is logged; when time runs out a :class:`KafkaUnavailableError`
    says where it tried and which setting to change.
    """
    deadline = time.monotonic() + settings.startup_timeout
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.describe_cluster()
        except (KafkaError, OSError) as exc:
            await _close_quietly(admin)
            remaining = deadline - time.monotonic()
            log.warning(
                "kafka_connect_failed",
                attempt=attempt,
                bootstrap_servers=settings.bootstrap_servers,
                error=str(exc) or type(exc).__name__,
                retry_in=round(min(delay, max(remaining, 0)), 2),
            )
            if remaining <= 0:
                raise KafkaUnavailableError(
                    f"cannot reach Kafka at {settings.bootstrap_servers} after {attempt} "
                    f"attempts in {settings.startup_timeout:g}s (last error: "
                    f"{str(exc) or type(exc).__name__}). Is the broker running? Set "
                    "--bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS, or raise "
                    "SENSORSTREAM_STARTUP_TIMEOUT."
                ) from exc
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)
        else:
            if attempt > 1:
                log.info("kafka_connected", attempt=attempt)
            return admin


async def _close_quietly(admin: AIOKafkaAdminClient) -> None:
    try:
        await admin.close()
    except Exception:  # closing a client that never connected may fail in any way
        log.debug("admin_close_failed", exc_info=True)


async def ensure_topic(
    admin: AIOKafkaAdminClient,
    name: str,
    *,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str] | None = None,
) -> TopicLayout:
    """Create ``name`` if it is missing; return the layout it actually has.

    An existing topic is never altered: callers compare ``partitions`` with what
    they asked for and say so when it differs.
    """
    new_topic = NewTopic(
        name=name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        topic_configs=configs or {},
    )
    try:
        response = await admin.create_topics([new_topic])
        error_code, error_message = _topic_error(response, name)
        if error_code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(error_code)(error_message)
    except KafkaError as exc:
        raise ConfigError(
            f"cannot create topic {name!r} with {partitions} partitions and replication "
            f"factor {replication_factor}: {exc}. Check --partitions and "
            "--replication-factor against the cluster size."
        ) from exc
    created = error_code == 0
    actual_partitions, actual_rf = await _describe(admin, name)
    return TopicLayout(name, actual_partitions, actual_rf, created)


def _topic_error(response: Any, name: str) -> tuple[int, str]:
    for entry in response.topic_errors:
        if entry[0] == name:
            return int(entry[1]), str(entry[2]) if len(entry) > 2 else ""
    return 0, ""


async def _describe(admin: AIOKafkaAdminClient, name: str) -> tuple[int, int]:
    # Metadata can lag a fresh create by a moment; poll briefly rather than sleep.
    for _ in range(50):
        described = await admin.describe_topics([name])
        for topic in described:
            if (
                topic.get("topic") == name
                and topic.get("partitions")
                and not topic.get("error_code")
            ):
                parts = topic["partitions"]
                return len(parts), len(parts[0].get("replicas", []))
        await asyncio.sleep(0.1)
    raise ConfigError(f"topic {name!r} did not appear in the cluster metadata")
