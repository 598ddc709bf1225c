"""MQTT messages in, Kafka records out, and each PUBACK only once Kafka has its record.

The data flow, one way: the MQTT link calls :meth:`Forwarder.receive` for each PUBLISH
(on the loop thread, synchronously: it appends to the *inbox*); the forwarding task
(:meth:`Forwarder.run`) takes the whole inbox at once as a *round*, validates each
payload with the contract's decoder, and hands Kafka one batch per partition (valid
readings, keyed by sensor id, to the input topic) plus the round's dead letters (to the
DLQ). It does not wait for Kafka's acknowledgement: while one round is in flight the
inbox fills with the next, so rounds grow with the load and cost one await per batch,
never one per message. Kafka's acknowledgements settle rounds in the
:class:`~sensorstream.bridge._acks.AckQueue`, which releases them in arrival order; the
released messages are acknowledged on their connection (PUBACK), in order.

What the rest of the bridge can rely on:

- **No PUBACK before Kafka has the record.** A message is acknowledged only after every
  batch of its round, and of every round before it, was acknowledged by Kafka (with
  ``acks=all``, idempotent): a crash at any point leaves what Kafka lacks unacknowledged,
  and the broker redelivers it.
- **Order.** One task forwards; each partition's batches are handed over in the order the
  messages arrived, and the idempotent producer keeps them in that order. MQTT delivers a
  session's messages in order, so each sensor's readings reach its partition in order.
- **Redeliveries are recognised** by their event id (:class:`~._recent.RecentEvents`):
  acknowledged, counted in ``duplicates_dropped``, not produced again.
- **Bounded.** ``max_in_flight`` messages at most are received and not yet acknowledged:
  there the link stops reading (the broker, told the same number as MQTT 5 Receive
  Maximum, stops sending first).
- **Kafka away is waited out.** A hand-over that waits longer than
  :data:`ENQUEUE_ATTEMPT_SECONDS` is retried through ``sensorstream.runtime.retry`` with no
  time budget (operation ``enqueue batch``); the messages stay unacknowledged meanwhile.
  Batches already handed over are retried by aiokafka until acknowledged (they never
  expire: ``keep_batches_until_delivered``).
- **A failure is fatal.** A batch Kafka refused for good cannot be resent without
  reordering its partition: :attr:`Forwarder.failure` is set, nothing after it is ever
  acknowledged (so the broker keeps all of it), and the service stops.

Hot path: :meth:`Forwarder.receive` is an append and two comparisons; :meth:`Forwarder._route`
runs once per message: the decoder, one dict lookup, list appends and one batch append,
no await, no log call, no metric call (counters move once per round).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Protocol

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from sensorstream.runtime import (
    FatalError,
    RetriableError,
    RetryPolicy,
    SensorstreamError,
    retry,
    translate_kafka_error,
)
from sensorstream.schema import DeadLetterReason, SensorReading, decode_reading

from ._acks import AckQueue, Round
from ._dead_letters import DeadLetter, DeadLetterBuilder
from ._metrics import RETRY_ENQUEUE_BATCH, BridgeMetrics
from ._recent import RecentEvents

__all__ = [
    "ENQUEUE_ATTEMPT_SECONDS",
    "ENQUEUE_POLICY",
    "DeliveryFailedError",
    "Forwarder",
    "Link",
    "partition_for",
]

ENQUEUE_ATTEMPT_SECONDS: Final = 10.0
"""How long one hand-over may wait for its partition's queue before it is retried (and
logged): shorter than aiokafka's own 40 s, so an outage shows within seconds."""
ENQUEUE_POLICY: Final = RetryPolicy(
    budget=math.inf, wait_initial=0.1, wait_max=1.0, wait_jitter=0.1
)
FLUSH_POLL_SECONDS: Final = 0.01
MAX_KEYS: Final = 1_000_000
"""Sensor ids whose key and partition are cached (then the cache starts over)."""


class Link(Protocol):
    """What the forwarder needs of an MQTT connection (``_mqtt.MqttLink``)."""

    @property
    def is_open(self) -> bool: ...

    def ack(self, mid: int) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class DeliveryFailedError(FatalError):
    """Kafka refused a batch for good: stop, with everything from there on unacknowledged."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default Kafka partitioner picks for ``key`` (murmur2)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


class Forwarder:
    """Forwards one MQTT connection at a time to Kafka (see the module doc).

    :meth:`attach` the connection before it delivers anything, :meth:`detach` it once it
    is gone (its inbox is dropped: none of it was handed over, the broker redelivers it).
    """

    def __init__(
        self,
        producer: Any,
        *,
        topic: str,
        partitions: int,
        dlq_topic: str,
        dlq_partitions: int,
        dead_letters: DeadLetterBuilder,
        recent: RecentEvents,
        metrics: BridgeMetrics,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
        enqueue_attempt: float = ENQUEUE_ATTEMPT_SECONDS,
        enqueue_policy: RetryPolicy = ENQUEUE_POLICY,
    ) -> None:
        if partitions < 1 or dlq_partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions} and {dlq_partitions}")
        self._producer = producer
        self._topic = topic
        self._partitions = partitions
        self._dlq_topic = dlq_topic
        self._dlq_partitions = dlq_partitions
        self._dlq_next = 0
        self._dead_letters = dead_letters
        self._recent = recent
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._enqueue_attempt = enqueue_attempt
        self._enqueue_policy = enqueue_policy
        self._keys: dict[str, tuple[bytes, int]] = {}
        self._acks: AckQueue[Link] = AckQueue()
        self._inbox: list[Any] = []
        self._link: Link | None = None
        self._paused = False
        self._stopping = False
        self._wakeup = asyncio.Event()
        self.received = 0
        self.produced = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self.acked = 0
        self.abandoned = 0
        self.last_ack_at: float | None = None
        """When Kafka last acknowledged a batch (monotonic)."""
        self.failure: DeliveryFailedError | None = None
        self.failed = asyncio.Event()

    # ------------------------------------------------------------------ state

    @property
    def in_flight(self) -> int:
        """Messages received and not yet acknowledged (or abandoned)."""
        return len(self._inbox) + self._acks.in_flight

    @property
    def waiting_since(self) -> float | None:
        """When the oldest round still waiting for Kafka was handed over (None: none)."""
        front = self._acks.front()
        return None if front is None else front.started

    # ------------------------------------------------------------------ connections

    def attach(self, link: Link) -> None:
        """``link`` is the connection from now on (before it delivers its first message)."""
        self._inbox = []
        self._link = link
        self._paused = False
        self._metrics.reading_paused.set(0)

    def detach(self, link: Link) -> int:
        """``link`` is gone: drop its inbox (never handed over); return how many."""
        if self._link is not link:
            return 0
        dropped = len(self._inbox)
        self._inbox = []
        self._link = None
        self._paused = False
        self._metrics.reading_paused.set(0)
        self._metrics.messages_in_flight.set(self.in_flight)
        return dropped

    def receive(self, message: Any) -> None:
        """One PUBLISH of the attached connection (the link's ``on_message``)."""
        # Hot path, once per message: an append and a comparison.
        if self._stopping:
            return  # read after the stop (a socket buffer's rest): the broker redelivers it
        inbox = self._inbox
        inbox.append(message)
        if len(inbox) == 1:
            self._wakeup.set()
        if len(inbox) + self._acks.in_flight >= self._max_in_flight and not self._paused:
            self._pause()

    def stop_reading(self) -> None:
        """Shutdown: read nothing more; :meth:`run` forwards the inbox and returns."""
        self._stopping = True
        if self._link is not None:
            self._link.pause()
        self._wakeup.set()

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not a guard
        """Wait up to ``timeout`` s until every forwarded message is released; True if so."""
        deadline = self._clock() + timeout
        # Shutdown only: a short poll is simpler than an event for "both queues empty".
        while self.failure is None and (self._inbox or len(self._acks)):
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(FLUSH_POLL_SECONDS)
        return self.failure is None

    # ------------------------------------------------------------------ forwarding

    async def run(self) -> None:
        """The forwarding task: take the inbox, hand it to Kafka, again (see the module doc)."""
        wakeup = self._wakeup
        while self.failure is None:
            if not self._inbox:
                if self._stopping:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            link = self._link
            messages, self._inbox = self._inbox, []
            if link is None:
                continue  # the connection ended before these were taken: redelivered
            try:
                await self._forward(link, messages)
            except DeliveryFailedError:
                return  # recorded in self.failure; the service stops on self.failed

    async def _forward(self, link: Link, messages: list[Any]) -> None:
        received_ms = time.time_ns() // 1_000_000
        count = len(messages)
        self.received += count
        self._metrics.messages_received.inc(count)
        by_partition, letters, mids, duplicates = self._route(messages, received_ms)
        if duplicates:
            self.duplicates += duplicates
            self._metrics.duplicates_dropped.inc(duplicates)
        # The round waits for a guard until every batch is handed over, so that one
        # acknowledged early cannot release it half-built.
        round_ = self._acks.open(link, mids, 1, self._clock())
        try:
            for partition, records in enumerate(by_partition):
                if records:
                    for batch, events in self._fill(records, received_ms):
                        await self._submit(round_, batch, self._topic, partition, events, None)
            if letters:
                for batch, events, reasons in self._fill_letters(letters, received_ms):
                    partition = self._dlq_next
                    self._dlq_next = (partition + 1) % self._dlq_partitions
                    await self._submit(round_, batch, self._dlq_topic, partition, events, reasons)
        finally:
            self._settle(round_)

    def _route(
        self, messages: list[Any], received_ms: int
    ) -> tuple[list[list[tuple[bytes, bytes]]], list[DeadLetter], list[int], int]:
        """Each message to its partition's records or to a dead letter; drop redeliveries."""
        by_partition: list[list[tuple[bytes, bytes]]] = [[] for _ in range(self._partitions)]
        letters: list[DeadLetter] = []
        mids: list[int] = []
        duplicates = 0
        keys = self._keys
        first_time = self._recent.first_time
        for message in messages:
            # Hot path, once per message: decode, a dict lookup, appends; no await, no log.
            if message.qos:
                mids.append(message.mid)  # QoS 0 has no PUBACK
            payload = message.payload
            decoded = decode_reading(payload)
            if type(decoded) is SensorReading:
                if not first_time(decoded.event_id):
                    duplicates += 1
                    continue
                placed = keys.get(decoded.sensor_id)
                if placed is None:
                    placed = self._place(decoded.sensor_id)
                by_partition[placed[1]].append((placed[0], payload))
            else:
                letters.append(
                    self._dead_letters.letter(payload, _topic_of(message), decoded, received_ms)  # type: ignore[arg-type]
                )
        return by_partition, letters, mids, duplicates

    def _place(self, sensor_id: str) -> tuple[bytes, int]:
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        key = sensor_id.encode()
        placed = (key, partition_for(key, self._partitions))
        self._keys[sensor_id] = placed
        return placed

    def _fill(self, records: list[tuple[bytes, bytes]], timestamp_ms: int) -> list[tuple[Any, int]]:
        producer = self._producer
        out: list[tuple[Any, int]] = []
        batch = producer.create_batch()
        append = batch.append
        events = 0
        for key, value in records:
            # Hot path, once per record: one append, no await.
            if append(key=key, value=value, timestamp=timestamp_ms) is None:
                out.append((batch, events))
                batch = producer.create_batch()
                append = batch.append
                append(key=key, value=value, timestamp=timestamp_ms)
                events = 0
            events += 1
        out.append((batch, events))
        return out

    def _fill_letters(
        self, letters: list[DeadLetter], timestamp_ms: int
    ) -> list[tuple[Any, int, Counter[DeadLetterReason]]]:
        producer = self._producer
        out: list[tuple[Any, int, Counter[DeadLetterReason]]] = []
        batch = producer.create_batch()
        reasons: Counter[DeadLetterReason] = Counter()
        for letter in letters:
            kwargs = {
                "key": None,
                "value": letter.value,
                "timestamp": timestamp_ms,
                "headers": letter.headers,
            }
            if batch.append(**kwargs) is None:
                out.append((batch, sum(reasons.values()), reasons))
                batch = producer.create_batch()
                batch.append(**kwargs)
                reasons = Counter()
            reasons[letter.reason] += 1
        out.append((batch, sum(reasons.values()), reasons))
        return out

    async def _submit(
        self,
        round_: Round[Link],
        batch: Any,
        topic: str,
        partition: int,
        events: int,
        reasons: Counter[DeadLetterReason] | None,
    ) -> None:
        if self.failure is not None:
            raise self.failure
        batch.close()
        future = await self._hand_over(batch, topic, partition)
        self._acks.add_pending(round_)
        future.add_done_callback(
            lambda done: self._delivered(done, round_, topic, partition, events, reasons)
        )

    async def _hand_over(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        """``send_batch``, retried in place while the partition's queue stays full."""

        async def attempt() -> asyncio.Future[Any]:
            try:
                async with asyncio.timeout(self._enqueue_attempt):
                    future: asyncio.Future[Any] = await self._producer.send_batch(
                        batch, topic, partition=partition
                    )
            except TimeoutError:
                raise RetriableError(
                    f"the queue of {topic}-{partition} stayed full for "
                    f"{self._enqueue_attempt:g} s (Kafka is not taking batches)"
                ) from None
            except (KafkaError, OSError) as exc:
                raise translate_kafka_error(
                    exc, f"handing a batch for {topic}-{partition} to the Kafka client"
                ) from exc
            return future

        try:
            # The good path stays out of the retry machinery.
            return await attempt()
        except RetriableError as exc:
            first: list[RetriableError] = [exc]

        async def again() -> asyncio.Future[Any]:
            if first:  # replay the first failure so that retry() logs and counts it
                raise first.pop()
            return await attempt()

        try:
            return await retry(RETRY_ENQUEUE_BATCH, again, policy=self._enqueue_policy)
        except SensorstreamError as exc:
            self._fail(exc, f"handing a batch for {topic}-{partition} over")
            raise self._stopped() from exc

    def _delivered(
        self,
        future: asyncio.Future[Any],
        round_: Round[Link],
        topic: str,
        partition: int,
        events: int,
        reasons: Counter[DeadLetterReason] | None,
    ) -> None:
        exc = asyncio.CancelledError() if future.cancelled() else future.exception()
        if exc is not None:
            self._fail(exc, f"delivering {events} records to {topic}-{partition}")
            return
        self.last_ack_at = self._clock()
        if reasons is None:
            self.produced += events
            self._metrics.records_produced.inc(events)
        else:
            self.dead_lettered += events
            for reason, count in reasons.items():
                self._metrics.dead_letters(reason).inc(count)
        self._acks.settle(round_)
        if round_.settled:
            self._metrics.produce_latency.observe(self._clock() - round_.started)
        self._release()

    def _settle(self, round_: Round[Link]) -> None:
        """Take off the hand-over guard of ``round_``."""
        self._acks.settle(round_)
        self._release()

    def _release(self) -> None:
        if self.failure is not None:
            return  # nothing after a failed batch is ever acknowledged
        for round_ in self._acks.release():
            link = round_.link
            if link.is_open and link is self._link:
                ack = link.ack
                for mid in round_.mids:
                    ack(mid)
                self.acked += len(round_.mids)
                self._metrics.messages_acked.inc(len(round_.mids))
            else:
                self.abandoned += len(round_.mids)
                self._metrics.acks_abandoned.inc(len(round_.mids))
        if self._paused and self.in_flight < self._max_in_flight:
            self._resume()

    def _pause(self) -> None:
        if self._link is not None:
            self._link.pause()
            self._paused = True
            self._metrics.reading_paused.set(1)

    def _resume(self) -> None:
        self._paused = False
        self._metrics.reading_paused.set(0)
        if self._link is not None and not self._stopping:
            self._link.resume()

    def _fail(self, exc: BaseException, action: str) -> None:
        if self.failure is not None:
            return
        error = exc if isinstance(exc, SensorstreamError) else translate_kafka_error(exc, action)
        self.failure = DeliveryFailedError(
            f"{error}; the bridge stopped rather than drop or reorder readings (what Kafka "
            "did not acknowledge stays unacknowledged on the MQTT broker)"
        )
        self.failure.__cause__ = exc
        self.failed.set()
        self._wakeup.set()

    def _stopped(self) -> DeliveryFailedError:
        assert self.failure is not None
        return self.failure


def _topic_of(message: Any) -> str:
    try:
        return str(message.topic)
    except UnicodeDecodeError:  # MQTT topics are UTF-8; a broker that let one through
        return repr(getattr(message, "_topic", b""))
