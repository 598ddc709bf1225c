"""The MQTT link's waits: a SUBACK behind a kept session's backlog is not a timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sensorstream.bridge._mqtt import MqttLink, MqttUnavailableError
from sensorstream.schema import SecurityError


class FakeClient:
    """What MqttLink.subscribe touches of a paho client."""

    protocol = MQTTProtocolVersion.MQTTv311

    def subscribe(self, topic: str, **_options: Any) -> tuple[int, int]:
        return 0, 7


async def _open_link() -> tuple[MqttLink, list[Any]]:
    received: list[Any] = []
    link = MqttLink(FakeClient(), where="test:1883", on_message=received.append)  # type: ignore[arg-type]
    link.closed = asyncio.get_running_loop().create_future()  # as open() leaves it
    return link, received


def _granted(qos: int) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, identifier=qos)


class TestSubscribe:
    async def test_a_backlog_before_the_suback_is_waited_out(self) -> None:
        """Messages keep arriving for longer than the timeout: still waiting, then granted."""
        link, received = await _open_link()

        async def backlog() -> None:
            for i in range(10):
                await asyncio.sleep(0.02)
                link._message(None, None, i)
            link._subscribed(None, None, 7, [_granted(1)], None)

        feeder = asyncio.create_task(backlog())
        await link.subscribe("sensors/+/readings", timeout=0.05)
        await feeder
        assert list(range(10)) == received

    async def test_silence_is_a_timeout(self) -> None:
        """No SUBACK and no message for the timeout: retriable."""
        link, _ = await _open_link()
        with pytest.raises(MqttUnavailableError, match="no SUBACK"):
            await link.subscribe("sensors/+/readings", timeout=0.05)

    async def test_a_refused_subscription_is_fatal(self) -> None:
        """SUBACK 'not authorized' (135): a setting or the broker's ACLs must change."""
        link, _ = await _open_link()
        asyncio.get_running_loop().call_later(
            0.01,
            link._subscribed,
            None,
            None,
            7,
            [ReasonCode(PacketTypes.SUBACK, identifier=135)],
            None,
        )
        with pytest.raises(SecurityError, match="reason code 135"):
            await link.subscribe("sensors/+/readings", timeout=1.0)
