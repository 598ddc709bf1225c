"""``sensorstream-mqtt-devices``: a simulated sensor fleet publishing to an MQTT broker.

The readings are the producer's (``sensorstream.producer._simulation.SensorFleet``): v1
JSON with each sensor's ``seq`` running 0, 1, 2, ... round-robin over the sensors, so the
end-to-end audit can account for every one. Each goes to its sensor's topic
(``--topic-template``, default ``sensors/<id>/readings``) with QoS 1 over one MQTT
connection, a gateway for the whole fleet, at ``--rate`` readings per second until
``--count`` readings or ``--duration`` seconds.

``--poison-every N`` adds one bad payload after every N readings, cycling through
:data:`POISON_KINDS` (each a different dead-letter reason), on the topic of the sensor
that just published.

A connection that breaks is made again with backoff (same client, so paho resends the
publishes the broker had not acknowledged, flagged DUP); generation waits meanwhile, and
while ``--max-unacked`` publishes await their PUBACK. At the end it waits up to
``--drain-timeout`` for the last PUBACKs and exits 0 if every publish was acknowledged,
1 if not (the final line, ``devices_stopped``, has the counts). The Kafka settings it
inherits are not used.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog
from paho.mqtt.enums import MQTTProtocolVersion

from sensorstream.producer._simulation import SensorFleet
from sensorstream.runtime import (
    EXIT_FATAL,
    RetryPolicy,
    StopSignal,
    configure_logging,
    load_settings,
    retry,
    run_service,
)

from ._mqtt import PROTOCOLS, MqttLink, connect_call, connect_properties, new_client
from .settings import DevicesSettings

__all__ = ["POISON_KINDS", "DeviceGateway", "main", "poison_payload"]

TICK_SECONDS: Final = 0.01
MAX_PER_TICK: Final = 5_000
SESSION_EXPIRY_SECONDS: Final = 3_600
CONNECT_TIMEOUT_SECONDS: Final = 10.0

log = structlog.get_logger("sensorstream.bridge.devices")


def _not_json(i: int) -> bytes:
    return b'{"poison": %d' % i


def _not_object(i: int) -> bytes:
    return b"[%d]" % i


def _invalid_utf8(i: int) -> bytes:
    return b"\xff\xfe%d" % i


def _out_of_range(i: int) -> bytes:
    return (
        b'{"schema_version":1,"event_id":"%s","sensor_id":"poison-%d","seq":0,'
        b'"event_time":%d,"temperature":999.0,"humidity":50.0}'
        % (str(uuid.uuid4()).encode(), i, int(time.time() * 1000))
    )


def _empty(_i: int) -> bytes:
    return b""


POISON_KINDS: Final[tuple[tuple[str, Callable[[int], bytes]], ...]] = (
    ("not_json", _not_json),
    ("not_object", _not_object),
    ("invalid_utf8", _invalid_utf8),
    ("out_of_range", _out_of_range),
    ("empty", _empty),
)
"""(dead-letter reason, payload maker) of the bad payloads, in the order they are sent."""


def poison_payload(i: int) -> tuple[str, bytes]:
    """The ``i``-th bad payload and the reason the bridge should give for it."""
    reason, make = POISON_KINDS[i % len(POISON_KINDS)]
    return reason, make(i)


class DeviceGateway:
    """The fleet on one MQTT connection (see the module doc); :meth:`run` returns the status."""

    def __init__(self, settings: DevicesSettings, stop: StopSignal) -> None:
        self.settings = settings
        self.stop = stop
        self.fleet = SensorFleet(
            settings.sensors,
            seed=settings.seed,
            anomaly_probability=settings.anomaly_probability,
            id_prefix=settings.sensor_prefix,
        )
        template = settings.topic_template
        self._topics = {
            key: template.format(sensor_id=sensor_id)
            for key, sensor_id in zip(self.fleet.keys, self.fleet.sensor_ids, strict=True)
        }
        password = settings.mqtt_password
        self.protocol = PROTOCOLS[settings.mqtt_protocol]
        self.client = new_client(
            settings.mqtt_client_id,
            protocol=self.protocol,
            username=settings.mqtt_username,
            password=None if password is None else password.get_secret_value(),
            manual_ack=False,
        )
        # No window of paho's own: --max-unacked bounds the publishes awaiting PUBACK, and
        # paho's window rescans every queued message on each PUBACK (quadratic).
        self.client.max_inflight_messages_set(0)
        self.client.on_publish = self._acknowledged
        self.link = MqttLink(self.client, where=settings.mqtt_address, on_message=_ignore)
        self.readings = 0
        self.poison = 0
        self.published = 0
        self.acked = 0
        self.reconnects = 0

    def _acknowledged(self, *_args: Any) -> None:
        self.acked += 1

    async def run(self) -> int:
        settings = self.settings
        started = time.monotonic()
        await self._connect(first=True)
        try:
            await self._publish(started)
            drained = await self._drain()
        finally:
            await self.link.close()
        log.info(
            "devices_stopped",
            readings=self.readings,
            poison=self.poison,
            published=self.published,
            acked=self.acked,
            reconnects=self.reconnects,
            seconds=round(time.monotonic() - started, 3),
            sensors=settings.sensors,
        )
        return 0 if drained else EXIT_FATAL

    async def _connect(self, *, first: bool) -> None:
        settings = self.settings
        if first:
            properties = None
            if self.protocol == MQTTProtocolVersion.MQTTv5:
                properties = connect_properties(
                    session_expiry=SESSION_EXPIRY_SECONDS, receive_maximum=None
                )
            connect = connect_call(
                self.client,
                settings.mqtt_host,
                settings.mqtt_port,
                keepalive=settings.mqtt_keepalive,
                properties=properties,
            )
        else:
            connect = self.client.reconnect  # same host, port and properties

        async def attempt() -> None:
            await self.link.open(connect, timeout=CONNECT_TIMEOUT_SECONDS)

        policy = RetryPolicy(budget=math.inf, wait_initial=0.25, wait_max=5.0)
        await retry("connect mqtt", attempt, policy=policy)
        if not first:
            self.reconnects += 1
        log.info("devices_connected", mqtt=settings.mqtt_address, reconnects=self.reconnects)

    async def _publish(self, started: float) -> None:
        settings = self.settings
        fleet = self.fleet
        publish = self.client.publish
        topics = self._topics
        poison_every = settings.poison_every
        limit = settings.count
        end = None if settings.duration is None else started + settings.duration
        rate = settings.rate
        while not self.stop.is_set():
            now = time.monotonic()
            if (limit is not None and self.readings >= limit) or (end is not None and now >= end):
                return
            if not self.link.is_open:
                await self._connect(first=False)
                continue
            due = math.floor((now - started) * rate) + 1 - self.readings
            due = min(due, MAX_PER_TICK, settings.max_unacked - (self.published - self.acked))
            if limit is not None:
                due = min(due, limit - self.readings)
            if due > 0:
                for key, value in fleet.generate(due, time.time_ns() // 1_000_000):
                    # Once per reading: one publish (paho queues it; no await).
                    topic = topics[key]
                    publish(topic, value, qos=1)
                    self.readings += 1
                    if poison_every and self.readings % poison_every == 0:
                        publish(topic, poison_payload(self.poison)[1], qos=1)
                        self.poison += 1
                self.published = self.readings + self.poison
            await asyncio.sleep(TICK_SECONDS)

    async def _drain(self) -> bool:
        deadline = time.monotonic() + self.settings.drain_timeout
        while self.acked < self.published:
            if time.monotonic() >= deadline:
                log.error(
                    "devices_unacknowledged",
                    unacknowledged=self.published - self.acked,
                    hint="the MQTT broker did not acknowledge every publish in "
                    "--drain-timeout; raise it or check the broker",
                )
                return False
            if not self.link.is_open and not self.stop.is_set():
                await self._connect(first=False)  # paho resends the unacknowledged
            await asyncio.sleep(TICK_SECONDS)
        return True


def _ignore(_message: Any) -> None:
    """The gateway subscribes to nothing."""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sensorstream-mqtt-devices``; exits with the run's status."""
    settings = load_settings(DevicesSettings, argv)

    async def service(stop: StopSignal) -> int:
        configure_logging(
            service=settings.service_name,
            version="0",
            instance=settings.instance_id,
            fmt=settings.resolved_log_format(),
            level=settings.log_level,
            secrets=settings.secret_values(),
        )
        return await DeviceGateway(settings, stop).run()

    sys.exit(run_service(service, prog=DevicesSettings.service_name))


if __name__ == "__main__":
    main()
