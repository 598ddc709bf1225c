"""Seed the redelivery window from what the input topic ends with, at start-up.

A bridge killed after Kafka had a round but before its PUBACKs left that round
unacknowledged on the MQTT broker, which redelivers it to the next bridge. That bridge
has an empty memory, so it reads the newest ``per_partition`` records of each input
partition first and remembers their event ids (:class:`~._recent.RecentEvents`): the
redelivered readings are then acknowledged without being produced twice. What a
predecessor can have left unacknowledged is at most its ``--max-in-flight`` messages,
the newest it wrote, so a window of a few times that per partition holds all of them as
long as other writers of the topic do not interleave more than that meanwhile.

Best effort by design: a seed that cannot be read (Kafka away, a partition that stalls)
is logged and skipped, never a reason not to start. Missing a redelivery costs a
duplicate in the input topic (at least once), never a lost reading. This module never
writes, commits or joins a consumer group.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from sensorstream.runtime import SensorstreamError, ServiceSettings, client_options, kafka_errors
from sensorstream.schema import SensorReading, decode_reading

__all__ = ["SEED_TIMEOUT_SECONDS", "Seed", "read_recent_event_ids"]

SEED_TIMEOUT_SECONDS: Final = 30.0
"""The most the seed may take; after that the bridge starts with what it has."""
_POLL_MS: Final = 200

log = structlog.get_logger("sensorstream.bridge")


@dataclass(frozen=True, slots=True)
class Seed:
    """What the seed read: event ids (oldest first per partition) and how it went."""

    event_ids: list[str]
    records: int
    complete: bool


async def read_recent_event_ids(
    settings: ServiceSettings,
    topic: str,
    partitions: int,
    per_partition: int,
    *,
    timeout: float = SEED_TIMEOUT_SECONDS,  # noqa: ASYNC109 - a budget for the whole read
) -> Seed:
    """The event ids of the newest ``per_partition`` records of each partition of ``topic``."""
    if per_partition <= 0:
        return Seed([], 0, True)
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_uncommitted",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    ids: list[str] = []
    records = 0
    deadline = time.monotonic() + timeout
    try:
        with kafka_errors(f"reading the end of {topic} to seed the redelivery window"):
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            remaining = set()
            for tp in tps:
                start = max(begins[tp], ends[tp] - per_partition)
                if start < ends[tp]:
                    consumer.seek(tp, start)
                    remaining.add(tp)
            while remaining and time.monotonic() < deadline:
                batches = await consumer.getmany(*remaining, timeout_ms=_POLL_MS, max_records=5000)
                for tp, batch in batches.items():
                    for record in batch:
                        if record.offset >= ends[tp]:
                            continue
                        records += 1
                        decoded = decode_reading(record.value or b"")
                        if type(decoded) is SensorReading:
                            ids.append(decoded.event_id)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            return Seed(ids, records, not remaining)
    except SensorstreamError as exc:
        log.warning("dedup_seed_failed", topic=topic, error=str(exc), records=records)
        return Seed(ids, records, False)
    finally:
        with contextlib.suppress(Exception):  # a consumer that never started may fail to stop
            await consumer.stop()
