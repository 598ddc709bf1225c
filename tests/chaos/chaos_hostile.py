"""Hostile input for the live pipeline, each record with the dead-letter reason it must get.

- every entry of ``sensorstream.schema.testing.malformed_corpus()`` (so every
  RejectReason), plus a tombstone (``empty``);
- records near the broker's size limit (Kafka's default ``message.max.bytes``, about
  1 MiB): a valid-looking reading padded to just under it and a blob of zero bytes
  (``too_large``, checked before any parsing);
- valid readings stamped far in the future (``future_event_time``) and far in the past
  (``late_event``: their partition's watermark is long past their window).

None of them can collide with the producer's readings: the corpus's sample sensor
``sensor-0007`` is renamed ``hostile-0007``, every key is a ``hostile-*`` id, and the
valid readings belong to ``hostile-*`` sensors with their own seqs from 0.
The corpus entry of 1 MiB plus a few bytes does not fit the input topic (which keeps
the declared configs, so the broker's default limit): the near-limit records stand in
for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from sensorstream.schema import (
    DeadLetterReason,
    Rejection,
    RejectReason,
    SensorReading,
    decode_reading,
    encode_reading,
)
from sensorstream.schema.testing import malformed_corpus, valid_payload

__all__ = ["FAR_TIMES", "HostileRecord", "expected_dead_letters", "hostile_round", "inject"]

BROKER_MESSAGE_MAX_BYTES = 1_048_588
"""Kafka's default ``message.max.bytes`` (1 MiB + 12): the largest record batch."""
NEAR_LIMIT_BYTES = BROKER_MESSAGE_MAX_BYTES - 2048
"""Room for the batch and record headers and the key."""
DAY_MS = 86_400_000
FAR_TIMES = {
    # name: (event time in epoch ms, or an offset from now when relative), reason
    "future-1d": (DAY_MS, True, DeadLetterReason.FUTURE_EVENT_TIME),
    "future-2099": (4_070_908_800_000, False, DeadLetterReason.FUTURE_EVENT_TIME),
    "past-1d": (-DAY_MS, True, DeadLetterReason.LATE_EVENT),
    "past-2001": (978_307_200_000, False, DeadLetterReason.LATE_EVENT),
}


@dataclass(frozen=True)
class HostileRecord:
    what: str
    key: bytes
    value: bytes | None
    reason: DeadLetterReason


def _corpus() -> list[HostileRecord]:
    records = []
    for i, (reason, payload) in enumerate(malformed_corpus()):
        payload = payload.replace(b'"sensor-0007"', b'"hostile-0007"')
        if len(payload) > NEAR_LIMIT_BYTES:
            continue  # larger than the broker takes: see the near-limit records
        records.append(
            HostileRecord(f"corpus #{i}", f"hostile-corpus-{i:02d}".encode(), payload, reason)
        )
    records.append(HostileRecord("tombstone", b"hostile-tombstone", None, DeadLetterReason.EMPTY))
    padded = valid_payload(sensor_id="hostile-big", padding="")
    padded = padded.replace(b'"padding":""', b'"padding":"' + b"x" * NEAR_LIMIT_BYTES)
    padded = padded[: NEAR_LIMIT_BYTES - 2] + b'"}'
    records.append(
        HostileRecord("padded reading", b"hostile-big", padded, DeadLetterReason.TOO_LARGE)
    )
    records.append(
        HostileRecord(
            "zero bytes", b"hostile-zeros", b"\0" * NEAR_LIMIT_BYTES, DeadLetterReason.TOO_LARGE
        )
    )
    for record in records:
        decoded = decode_reading(record.value if record.value is not None else b"")
        assert isinstance(decoded, Rejection), f"{record.what} decodes as {decoded}"
        assert record.reason == DeadLetterReason(decoded.reason), (record.what, decoded)
    covered = {record.reason.value for record in records}
    assert {reason.value for reason in RejectReason} <= covered, covered
    return records


CORPUS = _corpus()


def hostile_round(seq: int, now_ms: int) -> list[HostileRecord]:
    """One round: the whole corpus, and one far-time reading per ``FAR_TIMES`` sensor
    (``seq`` is that round's number, so each such sensor's seqs run 0, 1, 2...)."""
    far = []
    for name, (when, relative, reason) in FAR_TIMES.items():
        reading = SensorReading(
            schema_version=1,
            event_id=str(uuid.uuid4()),
            sensor_id=f"hostile-{name}",
            seq=seq,
            event_time=now_ms + when if relative else when,
            temperature=21.0,
            humidity=45.0,
        )
        far.append(HostileRecord(name, reading.sensor_id.encode(), encode_reading(reading), reason))
    return [*CORPUS, *far]


def expected_dead_letters(rounds: int) -> Counter[str]:
    """The dead letters ``rounds`` rounds must cause, by reason."""
    per_round = Counter(record.reason.value for record in hostile_round(0, 0))
    return Counter({reason: count * rounds for reason, count in per_round.items()})


async def inject(bootstrap: str, topic: str, records: list[HostileRecord]) -> None:
    """Produce ``records`` with a plain aiokafka producer; return once all are acked."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=2 * BROKER_MESSAGE_MAX_BYTES,
    )
    await producer.start()
    try:
        sent = [await producer.send(topic, r.value, key=r.key) for r in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
