"""One MQTT connection of a paho client, with its network I/O on the running asyncio loop.

paho-mqtt 2 is the Eclipse reference client; it has the two things QoS 1 end to end
needs, manual acknowledgements (``manual_ack=True``, :meth:`MqttLink.ack`) and MQTT 5
sessions (clean start off, a session expiry, Receive Maximum), and an API for running
it on someone else's event loop (``loop_read`` / ``loop_write`` / ``loop_misc`` and the
``on_socket_*`` callbacks). :class:`MqttLink` is that glue: the socket's readability and
writability are loop callbacks, keepalive runs on a loop task, and every paho callback
(``on_message``, ``on_connect``, ...) therefore runs on the loop thread, never on one of
paho's. Only the blocking TCP connect (and the name lookup before it) runs in a worker
thread, before any loop callback is registered.

Contract of the callbacks a user passes in:

- ``on_message(message)`` runs on the loop thread, synchronously, once per PUBLISH, in the
  order the broker sent them. It must not block or await; it must not raise (an
  exception is logged by paho and the message is then neither acked nor redelivered
  until the next connection).
- Nothing is acknowledged unless the user calls :meth:`MqttLink.ack` (``manual_ack``). A
  PUBACK must be sent in the order the messages arrived (MQTT 3.1.1 4.6, MQTT 5 4.6); the
  link sends them in the order ``ack`` is called. A message never acked on this
  connection is redelivered by the broker on the next one (same client id, session
  kept): never ack one after the connection that delivered it is gone — its packet id
  may by then name another message.

Errors are the project's (``sensorstream.schema``): a broker that cannot be reached, or
refuses for a reason that may pass, is :class:`MqttUnavailableError` (retriable); one that
refuses our credentials is a ``SecurityError``, and one that refuses the client id or
the subscription a ``ConfigError`` (fatal: a retry does not fix a setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from sensorstream.schema import ConfigError, RetriableError, SecurityError

__all__ = [
    "MAX_PACKETS_PER_WAKEUP",
    "PROTOCOLS",
    "MqttLink",
    "MqttUnavailableError",
    "connect_call",
    "connect_properties",
    "new_client",
]

MAX_PACKETS_PER_WAKEUP: Final = 1000
"""Packets read per readable event before the loop gets a turn (a burst is read in
steps, each followed by the forwarding task)."""
MISC_INTERVAL: Final = 1.0
"""How often paho's keepalive bookkeeping (``loop_misc``) runs."""

# CONNACK / SUBACK reason codes (MQTT 5 3.2.2.2) that no retry can fix.
_BAD_CREDENTIALS: Final = frozenset({134, 135, 138, 140})
_BAD_SETTINGS: Final = frozenset({132, 133, 153, 154, 155})


class MqttUnavailableError(RetriableError):
    """The MQTT broker cannot be reached or turned us away for now: retry."""


PROTOCOLS: Final = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
"""The protocol versions a link speaks, by their setting's spelling."""


def new_client(
    client_id: str,
    *,
    protocol: MQTTProtocolVersion,
    username: str | None,
    password: str | None,
    manual_ack: bool,
) -> mqtt.Client:
    """A paho client with a persistent session (MQTT 3.1.1: clean session off) that never
    reconnects by itself (the caller decides)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=False if protocol != MQTTProtocolVersion.MQTTv5 else None,
        reconnect_on_failure=False,
        manual_ack=manual_ack,
    )
    if username is not None:
        client.username_pw_set(username, password)
    return client


def connect_properties(*, session_expiry: int, receive_maximum: int | None) -> Properties:
    """CONNECT properties: keep the session ``session_expiry`` s; at most ``receive_maximum``
    unacknowledged QoS 1 messages in flight to us (MQTT 5 flow control)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    return properties


def _refusal(reason: ReasonCode, what: str, where: str) -> Exception:
    code = int(reason.value)
    detail = f"the MQTT broker at {where} refused {what}: {reason} (reason code {code})"
    if code in _BAD_CREDENTIALS:
        return SecurityError(
            f"{detail}; check --mqtt-username / SENSORSTREAM_MQTT_USERNAME and "
            "--mqtt-password-file / SENSORSTREAM_MQTT_PASSWORD_FILE, and the broker's ACLs"
        )
    if code in _BAD_SETTINGS:
        return ConfigError(
            f"{detail}; check --mqtt-client-id / SENSORSTREAM_MQTT_CLIENT_ID and --mqtt-topic "
            "/ SENSORSTREAM_MQTT_TOPIC"
        )
    return MqttUnavailableError(detail)


class MqttLink:
    """A paho client's current connection, run on the asyncio loop (see the module doc).

    :meth:`open` connects (and can connect the same client again after a loss, which
    lets paho resend its own unacknowledged publishes); :attr:`closed` resolves with a
    short reason when the connection ends for any reason.
    """

    def __init__(
        self, client: mqtt.Client, *, where: str, on_message: Callable[[Any], None]
    ) -> None:
        self.client = client
        self.where = where
        self.received = 0
        """PUBLISH packets received on this link (all connections)."""
        self.session_present = False
        self.closed: asyncio.Future[str] = asyncio.Future()
        self.closed.set_result("not connected")
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._fd: int | None = None
        self._reading = False
        self._writing = False
        self._misc: asyncio.Task[None] | None = None
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_subscribe = self._subscribed

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    async def open(self, connect: Callable[[], Any], *, timeout: float) -> bool:  # noqa: ASYNC109
        """Connect with ``connect`` (``client.connect(...)`` or ``client.reconnect``) and
        wait for the CONNACK; return whether the broker had kept our session.

        Raises :class:`MqttUnavailableError`, or a fatal error for a refusal no retry
        fixes (see the module doc).
        """
        client = self.client
        # Until the socket is ours, paho writes CONNECT itself, from the worker thread.
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        client.on_socket_close = None
        self._connack = self._loop.create_future()
        try:
            await asyncio.to_thread(connect)
        except (OSError, ValueError) as exc:
            raise MqttUnavailableError(
                f"cannot connect to the MQTT broker at {self.where}: {exc}; is it running? "
                "Set --mqtt-host / SENSORSTREAM_MQTT_HOST and --mqtt-port / "
                "SENSORSTREAM_MQTT_PORT"
            ) from exc
        self.closed = self._loop.create_future()
        self._attach()
        try:
            async with asyncio.timeout(timeout):
                reason = await self._connack
        except TimeoutError:
            self.drop("no CONNACK")
            raise MqttUnavailableError(
                f"the MQTT broker at {self.where} sent no CONNACK within {timeout:g} s"
            ) from None
        except BaseException:
            self.drop("cancelled")
            raise
        if reason.is_failure:
            self.drop(f"refused: {reason}")
            raise _refusal(reason, "the connection", self.where)
        return self.session_present

    async def subscribe(self, topic: str, *, timeout: float) -> None:  # noqa: ASYNC109
        """Subscribe to ``topic`` with QoS 1 and wait for the SUBACK granting it (as long
        as messages keep arriving meanwhile; ``timeout`` s of silence is a timeout)."""
        if self.client.protocol == MQTTProtocolVersion.MQTTv5:
            # Retained messages only on a new subscription, not again on every reconnect.
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            result, mid = self.client.subscribe(topic, options=options)
        else:
            result, mid = self.client.subscribe(topic, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttUnavailableError(f"subscribing to {topic!r} failed: {result}")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = future
        waiters: set[asyncio.Future[Any]] = {future, self.closed}
        try:
            while True:
                # A kept session's queued messages come before the SUBACK: a broker
                # draining a backlog to us is alive, so only silence counts as a timeout.
                before = self.received
                done, _ = await asyncio.wait(
                    waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                if self.received == before:
                    raise MqttUnavailableError(
                        f"the MQTT broker at {self.where} sent no SUBACK for {topic!r} "
                        f"within {timeout:g} s"
                    )
        finally:
            self._subacks.pop(mid, None)
        if future not in done:
            raise MqttUnavailableError(
                f"the MQTT connection to {self.where} closed while subscribing ({self.closed})"
            )
        [granted] = future.result()
        if granted.is_failure or int(granted.value) < 1:
            raise _refusal(granted, f"the subscription to {topic!r} with QoS 1", self.where)

    def ack(self, mid: int) -> None:
        """Send the PUBACK of message ``mid`` (of this connection; see the module doc)."""
        self.client.ack(mid, 1)

    def pause(self) -> None:
        """Stop reading from the socket (the broker holds what we do not read)."""
        if self._reading and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume(self) -> None:
        """Read again after :meth:`pause`."""
        if not self._reading and self._fd is not None and self.is_open:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    @property
    def paused(self) -> bool:
        return self.is_open and not self._reading

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Send DISCONNECT after everything queued (acks included) and wait until the
        socket is closed (at most ``timeout`` s, then it is closed anyway)."""
        if not self.is_open:
            return
        # paho closes the socket once DISCONNECT is written: no need to read anything more.
        self.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        if self.is_open:
            self.drop("disconnect timed out")

    def drop(self, reason: str) -> None:
        """Close the socket now, without DISCONNECT (the broker keeps the session)."""
        if self.is_open:
            sock = self.client.socket()
            self._detach(reason)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # --------------------------------------------------------------------- loop glue

    def _attach(self) -> None:
        client = self.client
        sock = client.socket()
        if sock is None:
            raise MqttUnavailableError(f"the MQTT connection to {self.where} closed at once")
        self._fd = sock.fileno()
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_writing
        client.on_socket_close = self._socket_closed
        self._loop.add_reader(self._fd, self._readable)
        self._reading = True
        if client.want_write():
            self._want_write(client, None, sock)
        self._misc = self._loop.create_task(self._keepalive(), name="mqtt-keepalive")

    def _detach(self, reason: str) -> None:
        fd = self._fd
        if fd is not None:
            if self._reading:
                self._loop.remove_reader(fd)
            if self._writing:
                self._loop.remove_writer(fd)
        self._fd = None
        self._reading = self._writing = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if not self.closed.done():
            self.closed.set_result(reason)
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()

    def _readable(self) -> None:
        client = self.client
        for _ in range(MAX_PACKETS_PER_WAKEUP):
            before = self.received
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._detach("connection lost")
                return
            # paho reads one packet per call and cannot say whether the socket had more:
            # go on while the last call delivered a message, else wait for the loop.
            if self.received == before or not self._reading:
                return

    def _writable(self) -> None:
        if self.client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._detach("connection lost")

    def _want_write(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        if not self._writing and self._fd is not None:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True

    def _done_writing(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        if self._writing and self._fd is not None:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _socket_closed(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        self._detach("socket closed")

    async def _keepalive(self) -> None:
        client = self.client
        while True:
            await asyncio.sleep(MISC_INTERVAL)
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._detach("keepalive timed out")
                return

    # --------------------------------------------------------------------- paho callbacks

    def _connected(
        self, _client: Any, _userdata: Any, flags: Any, reason: ReasonCode, _properties: Any
    ) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _disconnected(
        self, _client: Any, _userdata: Any, _flags: Any, reason: ReasonCode, _properties: Any
    ) -> None:
        self._detach(f"disconnected: {reason}")

    def _message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.received += 1
        self._on_message(message)

    def _subscribed(
        self, _client: Any, _userdata: Any, mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        future = self._subacks.get(mid)
        if future is not None and not future.done():
            future.set_result(list(reasons))


def connect_call(
    client: mqtt.Client,
    host: str,
    port: int,
    *,
    keepalive: int,
    properties: Properties | None,
) -> Callable[[], Any]:
    """``client.connect`` keeping the session: MQTT 5 with clean start off and
    ``properties`` (:func:`connect_properties`); MQTT 3.1.1 (``properties`` None) with the
    client's clean session off."""
    if properties is None:
        return functools.partial(client.connect, host, port, keepalive)
    return functools.partial(
        client.connect, host, port, keepalive, clean_start=False, properties=properties
    )
