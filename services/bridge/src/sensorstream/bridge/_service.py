"""The bridge service: settings in, MQTT messages forwarded to Kafka, exit code back.

Start-up: logging, the observability server, the input and dead-letter topics (created
from the declared topology if missing), the redelivery window seeded from the end of the
input topic (``_seeding.py``), the Kafka producer (idempotent, ``acks=all``, batches that
never expire; each step retried for ``startup_timeout``). Then three tasks in a
``TaskGroup``: the MQTT session (connect, subscribe, and after a loss reconnect with
backoff, for ever: an MQTT broker away is never fatal), the forwarding task
(``_forwarding.py``) and a reporter (gauges every second, a summary line every
``summary_interval``).

MQTT: protocol 5 with clean start off, a fixed client id (``--mqtt-client-id``) and a
session expiry (``--mqtt-session-expiry``), so the broker queues what devices publish
while the bridge is away and delivers it when it is back; Receive Maximum is
``--max-in-flight``. Each connection gets a fresh paho client; what it delivered and
Kafka had not acknowledged by the time it ended is redelivered on the next one.

On a stop request (SIGTERM): stop reading, forward what was read, wait until Kafka
acknowledged it and the PUBACKs are queued (until ``shutdown_timeout`` after the request),
send DISCONNECT after them, stop the producer, exit 0. What Kafka had not acknowledged by
the deadline stays unacknowledged on the broker (the final line says how much): nothing
is lost, it is redelivered to the next bridge. A batch Kafka refused for good
(``DeliveryFailedError``) stops the bridge the same way, and it exits 1 naming the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.enums import MQTTProtocolVersion
from prometheus_client import REGISTRY, CollectorRegistry

from sensorstream.producer._client import keep_batches_until_delivered
from sensorstream.runtime import (
    KafkaUnavailableError,
    ObservabilityServer,
    RetriesExhaustedError,
    RetryPolicy,
    StopSignal,
    client_options,
    configure_logging,
    connect_admin,
    ensure_topics,
    instrument_retries,
    kafka_errors,
    retry,
    startup_policy,
    until_stopped,
)
from sensorstream.schema import TOPOLOGY

from ._dead_letters import DeadLetterBuilder
from ._forwarding import Forwarder
from ._metrics import RETRY_CONNECT_MQTT, RETRY_START_PRODUCER, BridgeMetrics
from ._mqtt import PROTOCOLS, MqttLink, connect_call, connect_properties, new_client
from ._recent import RecentEvents
from ._seeding import read_recent_event_ids
from .settings import BridgeSettings

__all__ = ["EXIT_OK", "BridgeService", "package_version", "run"]

EXIT_OK = 0
MQTT_TIMEOUT_SECONDS = 10.0
"""How long a CONNACK or SUBACK may take before the attempt is retried."""
STALLED_SECONDS = 10.0
"""/readyz turns 503 when Kafka has acknowledged nothing for this long while rounds wait."""

log = structlog.get_logger("sensorstream.bridge")


def package_version() -> str:
    try:
        return version("sensorstream-bridge")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0.0.0"


def create_producer(settings: BridgeSettings) -> AIOKafkaProducer:
    """The producer's settings that QoS 1 end to end needs: idempotent, ``acks=all``, and
    batches that never expire while Kafka is away (``sensorstream.producer._client``)."""
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.batch_size,
        compression_type=settings.kafka_compression(),
        max_request_size=max(1_048_576, settings.dlq_max_bytes + 65_536),
    )
    keep_batches_until_delivered(producer)
    return producer


class BridgeService:
    """One run of the bridge; :meth:`run` returns the exit status."""

    def __init__(
        self, settings: BridgeSettings, stop: StopSignal, *, registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.registry = registry
        self.metrics = BridgeMetrics(registry, version=package_version())
        self.recent = RecentEvents(settings.dedup_window)
        self.forwarder: Forwarder | None = None
        self.link: MqttLink | None = None
        self.server: ObservabilityServer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._subscribed = False
        self._stopping = False
        self._had_session = False
        self._started_at = time.monotonic()

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while subscribed to MQTT and Kafka keeps acknowledging what waits."""
        forwarder = self.forwarder
        if self._stopping or forwarder is None:
            return False, {"reason": "stopping" if self._stopping else "starting"}
        details: dict[str, Any] = {
            "mqtt": self.settings.mqtt_address,
            "mqtt_connected": self._subscribed,
            "in_flight": forwarder.in_flight,
        }
        if not self._subscribed:
            return False, {**details, "reason": "not connected to the MQTT broker"}
        waiting = forwarder.waiting_since
        if waiting is not None:
            last = forwarder.last_ack_at
            since = time.monotonic() - max(waiting, last if last is not None else waiting)
            if since > STALLED_SECONDS:
                return False, {
                    **details,
                    "reason": f"no acknowledgement from Kafka for {since:.1f}s",
                }
        return True, details

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        settings = self.settings
        instrument_retries(self.metrics.retries)
        self.server = ObservabilityServer.from_settings(
            settings, readiness=self.readiness, registry=self.registry
        )
        await self.server.start()
        log.info(
            "bridge_starting", metrics_port=self.server.bound_port, settings=settings.public_dict()
        )
        try:
            layout = await until_stopped(self.stop, self._prepare_topics())
            if layout is None:
                return EXIT_OK
            partitions, dlq_partitions = layout
            if await until_stopped(self.stop, self._seed(partitions)) is None:
                return EXIT_OK
            self._producer = await until_stopped(self.stop, self._start_producer())
            if self._producer is None:
                return EXIT_OK
            self.forwarder = Forwarder(
                self._producer,
                topic=settings.topic,
                partitions=partitions,
                dlq_topic=settings.dlq_topic,
                dlq_partitions=dlq_partitions,
                dead_letters=DeadLetterBuilder(
                    instance=settings.instance_id, max_bytes=settings.dlq_max_bytes
                ),
                recent=self.recent,
                metrics=self.metrics,
                max_in_flight=settings.max_in_flight,
            )
            self.metrics.up.set(1)
            return await self._bridge()
        finally:
            self.metrics.up.set(0)
            self.metrics.mqtt_connected.set(0)
            if self._producer is not None:
                await self._stop_producer(self.settings.shutdown_timeout)
            await self.server.stop()

    async def _prepare_topics(self) -> tuple[int, int]:
        """Create the input and dead-letter topics if missing; their partition counts."""
        settings = self.settings
        topology = TOPOLOGY.configured(
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            names={"input": settings.topic, "dlq": settings.dlq_topic},
        )
        admin = await connect_admin(settings)
        try:
            states = await ensure_topics(
                admin,
                [topology.input, topology.dlq],
                bootstrap=settings.bootstrap_servers,
                policy=startup_policy(settings),
            )
        finally:
            await admin.close()
        by_name = {state.spec.name: state.partitions for state in states}
        return by_name[settings.topic], by_name[settings.dlq_topic]

    async def _seed(self, partitions: int) -> bool:
        """Remember the event ids the input topic ends with (``_seeding.py``)."""
        started = time.monotonic()
        seed = await read_recent_event_ids(
            self.settings, self.settings.topic, partitions, self.settings.dedup_window
        )
        added = self.recent.seed(seed.event_ids)
        log.info(
            "dedup_window_seeded",
            event_ids=added,
            records_read=seed.records,
            complete=seed.complete,
            seconds=round(time.monotonic() - started, 3),
        )
        return True

    async def _start_producer(self) -> AIOKafkaProducer:
        settings = self.settings

        async def start() -> AIOKafkaProducer:
            producer = create_producer(settings)
            try:
                with kafka_errors(f"starting the Kafka producer at {settings.bootstrap_servers}"):
                    await producer.start()
            except BaseException:
                await producer.stop()
                raise
            return producer

        try:
            return await retry(RETRY_START_PRODUCER, start, policy=startup_policy(settings))
        except RetriesExhaustedError as exc:
            raise KafkaUnavailableError(
                f"cannot start the Kafka producer at {settings.bootstrap_servers} within "
                f"{settings.startup_timeout:g} s (last error: {exc.__cause__}); check the broker "
                "and --bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS, or raise "
                "SENSORSTREAM_STARTUP_TIMEOUT"
            ) from exc

    async def _bridge(self) -> int:
        forwarder = self.forwarder
        assert forwarder is not None
        async with asyncio.TaskGroup() as tasks:
            forwarding = tasks.create_task(forwarder.run(), name="forward")
            session = tasks.create_task(self._mqtt_session(), name="mqtt-session")
            reporter = tasks.create_task(self._report(), name="report")
            stopped = tasks.create_task(self.stop.wait())
            failed = tasks.create_task(forwarder.failed.wait())
            await asyncio.wait({stopped, failed, session}, return_when=asyncio.FIRST_COMPLETED)
            deadline = time.monotonic() + self.settings.shutdown_timeout
            self._stopping = True
            forwarder.stop_reading()
            session.cancel()
            for task in (reporter, stopped, failed):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(forwarding), self._left(deadline))
            flushed = await forwarder.flush(self._left(deadline))
            forwarding.cancel()
            if self.link is not None:
                await self.link.close(timeout=max(0.5, self._left(deadline)))
        self._final_line(flushed)
        if forwarder.failure is not None:
            raise forwarder.failure
        return EXIT_OK

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    async def _stop_producer(self, timeout: float) -> None:  # noqa: ASYNC109
        assert self._producer is not None
        try:
            await asyncio.wait_for(self._producer.stop(), max(0.5, timeout))
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("producer_close_failed", error=str(exc) or type(exc).__name__)

    def _final_line(self, flushed: bool) -> None:
        forwarder = self.forwarder
        assert forwarder is not None
        summary = {
            "received": forwarder.received,
            "produced": forwarder.produced,
            "dead_lettered": forwarder.dead_lettered,
            "duplicates_dropped": forwarder.duplicates,
            "acked": forwarder.acked,
            "abandoned": forwarder.abandoned,
            "seconds": round(time.monotonic() - self._started_at, 3),
        }
        left = forwarder.in_flight
        if flushed and not left:
            log.info("bridge_stopped", **summary)
            return
        why = (
            "Kafka had not acknowledged them by the shutdown deadline"
            if forwarder.failure is None
            else str(forwarder.failure)
        )
        log.warning(
            "bridge_stopped_with_unacknowledged",
            **summary,
            unacknowledged=left,
            message=f"{left} MQTT messages were not acknowledged ({why}); the MQTT broker "
            "keeps them and redelivers them to the next bridge",
        )

    # ------------------------------------------------------------------ MQTT

    async def _mqtt_session(self) -> None:
        """Connect and subscribe; after a loss, again with backoff, until stopped."""
        settings = self.settings
        policy = RetryPolicy(
            budget=math.inf, wait_initial=0.25, wait_max=settings.mqtt_reconnect_max
        )
        connections = 0
        while not self.stop.is_set():
            link = await retry(RETRY_CONNECT_MQTT, self._connect_once, policy=policy)
            self.link = link
            connections += 1
            if connections > 1:
                self.metrics.mqtt_reconnects.inc()
            self._subscribed = True
            self.metrics.mqtt_connected.set(1)
            if self._had_session and not link.session_present:
                log.warning(
                    "mqtt_session_lost",
                    mqtt=settings.mqtt_address,
                    hint="the broker no longer had the bridge's session (it lost its "
                    "persistence, or the session expired: --mqtt-session-expiry): what devices "
                    "published while the bridge was away may be lost",
                )
            self._had_session = True
            log.info(
                "mqtt_connected",
                mqtt=settings.mqtt_address,
                topic=settings.mqtt_topic,
                client_id=settings.mqtt_client_id,
                session_present=link.session_present,
                connection=connections,
            )
            # Shielded: cancelling this task at shutdown must not end the connection.
            reason = await asyncio.shield(link.closed)
            self._subscribed = False
            self.metrics.mqtt_connected.set(0)
            assert self.forwarder is not None
            dropped = self.forwarder.detach(link)
            log.warning(
                "mqtt_disconnected",
                mqtt=settings.mqtt_address,
                reason=reason,
                unacknowledged=self.forwarder.in_flight + dropped,
                hint="reconnecting; the broker redelivers what was not acknowledged",
            )

    async def _connect_once(self) -> MqttLink:
        settings = self.settings
        forwarder = self.forwarder
        assert forwarder is not None
        password = settings.mqtt_password
        protocol = PROTOCOLS[settings.mqtt_protocol]
        client = new_client(
            settings.mqtt_client_id,
            protocol=protocol,
            username=settings.mqtt_username,
            password=None if password is None else password.get_secret_value(),
            manual_ack=True,
        )
        link = MqttLink(client, where=settings.mqtt_address, on_message=forwarder.receive)
        # Attached before CONNECT: a kept session's messages follow the CONNACK at once.
        forwarder.attach(link)
        properties = None
        if protocol == MQTTProtocolVersion.MQTTv5:
            properties = connect_properties(
                session_expiry=settings.mqtt_session_expiry, receive_maximum=settings.max_in_flight
            )
        try:
            await link.open(
                connect_call(
                    client,
                    settings.mqtt_host,
                    settings.mqtt_port,
                    keepalive=settings.mqtt_keepalive,
                    properties=properties,
                ),
                timeout=MQTT_TIMEOUT_SECONDS,
            )
            await link.subscribe(settings.mqtt_topic, timeout=MQTT_TIMEOUT_SECONDS)
        except BaseException:
            link.drop("connect failed")
            forwarder.detach(link)
            raise
        return link

    # ------------------------------------------------------------------ reporting

    async def _report(self) -> None:
        forwarder = self.forwarder
        assert forwarder is not None
        metrics = self.metrics
        interval = self.settings.summary_interval
        summary_at = time.monotonic()
        summary_acked = 0
        while True:
            await asyncio.sleep(1.0)
            metrics.messages_in_flight.set(forwarder.in_flight)
            now = time.monotonic()
            if now - summary_at >= interval:
                log.info(
                    "bridge_summary",
                    rate=round((forwarder.acked - summary_acked) / (now - summary_at), 1),
                    received=forwarder.received,
                    produced=forwarder.produced,
                    dead_lettered=forwarder.dead_lettered,
                    duplicates_dropped=forwarder.duplicates,
                    acked=forwarder.acked,
                    in_flight=forwarder.in_flight,
                    mqtt_connected=self._subscribed,
                )
                summary_acked, summary_at = forwarder.acked, now


async def run(
    settings: BridgeSettings, stop: StopSignal, *, registry: CollectorRegistry = REGISTRY
) -> int:
    """Configure logging, run one bridge until stopped; return the exit status."""
    configure_logging(
        service=settings.service_name,
        version=package_version(),
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
        secrets=settings.secret_values(),
    )
    return await BridgeService(settings, stop, registry=registry).run()
