"""Small helpers for tests that talk to the real local Kafka broker.

Everything here goes through aiokafka's public API, so a test reads like a client of
the broker, not of our services. Topic names are unique per call: tests share one
broker per session and must never see each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

__all__ = ["consume_all", "create_topic", "new_topic_name"]

TOPIC_READY_TIMEOUT = 15.0


def new_topic_name(prefix: str = "test") -> str:
    """A topic name no other test uses, e.g. ``roundtrip-3f2a9c1b7d4e``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create ``name`` and return once every partition has a leader and a full ISR."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=dict(config or {}),
                )
            ]
        )
        for topic, error_code, *message in response.topic_errors:
            if error_code != 0:
                raise RuntimeError(f"creating topic {topic} failed: error {error_code} {message}")
        await _wait_until_led(admin, name, partitions, replication_factor)
    finally:
        await admin.close()


async def _wait_until_led(
    admin: AIOKafkaAdminClient, name: str, partitions: int, replication_factor: int
) -> None:
    # CreateTopics returns when the controller has the topic; brokers learn of it a
    # moment later. Waiting here keeps "unknown topic" retries out of every test.
    deadline = asyncio.get_running_loop().time() + TOPIC_READY_TIMEOUT
    while True:
        described: list[dict[str, Any]] = await admin.describe_topics([name])
        ready = [
            p
            for topic in described
            if topic["error_code"] == 0
            for p in topic["partitions"]
            if p["leader"] >= 0 and len(p["isr"]) == replication_factor
        ]
        if len(ready) == partitions:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topic {name} has no leader on every partition: {described}")
        await asyncio.sleep(0.1)


async def consume_all(
    bootstrap: str,
    topic: str,
    *,
    isolation_level: str = "read_uncommitted",
    timeout: float = 10.0,  # noqa: ASYNC109 -- a budget for the whole read, not one call
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning to its end offsets as of now.

    Uses no consumer group, so it commits nothing. With ``read_committed`` the end is
    the last stable offset and aborted records are skipped. Records come partition by
    partition in offset order.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partition_ids(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end_offsets = await consumer.end_offsets(partitions)

        by_partition: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {
            tp: [] for tp in partitions
        }
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            behind = [tp for tp in partitions if await consumer.position(tp) < end_offsets[tp]]
            if not behind:
                break
            if asyncio.get_running_loop().time() > deadline:
                positions = {tp.partition: await consumer.position(tp) for tp in partitions}
                ends = {tp.partition: offset for tp, offset in end_offsets.items()}
                raise TimeoutError(
                    f"read {topic} for {timeout} s without reaching its end: "
                    f"positions {positions}, end offsets {ends}"
                )
            batches = await consumer.getmany(*behind, timeout_ms=200)
            for tp, records in batches.items():
                by_partition[tp].extend(r for r in records if r.offset < end_offsets[tp])
        return [record for tp in partitions for record in by_partition[tp]]
    finally:
        await consumer.stop()


async def _partition_ids(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    ids = sorted(p["partition"] for t in described if t["error_code"] == 0 for p in t["partitions"])
    if not ids:
        raise LookupError(f"topic {topic} does not exist on {bootstrap}")
    return ids
