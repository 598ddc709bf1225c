"""Reading the three topics into a :class:`~._ledger.Ledger`, one pass at a time.

A pass snapshots where each topic ends, aggregates first, then reads the input, the
DLQ and the aggregates up to those ends, in that order. An aggregate is written after
the readings it covers, so every reading an aggregate of the pass covers has been fed
to the ledger before the aggregate: its count is checked against complete knowledge.
``--follow`` repeats passes; each one starts where the previous stopped.

No consumer group is used: the audit assigns every partition itself and commits
nothing, so it never disturbs the pipeline it watches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from sensorstream.runtime import (
    KafkaUnavailableError,
    RetriesExhaustedError,
    RetryPolicy,
    kafka_errors,
    retry,
)
from sensorstream.schema import ConfigError

from ._ledger import Ledger

__all__ = ["AuditTopics", "PassStats", "TopicReader", "audit_pass"]

log = structlog.get_logger("sensorstream.audit")

IsolationLevel = Literal["read_committed", "read_uncommitted"]

_FETCH_TIMEOUT_MS: Final = 500
_BATCH: Final = 20_000
_STALL_SECONDS: Final = 30.0
"""A partition that stops short of its snapshot end this long (an open transaction that
never ends) is left for the next pass."""


@dataclass(frozen=True)
class AuditTopics:
    """The topics of one pipeline: what went in, and the two places a reading may end."""

    input: str
    aggregates: str
    dlq: str


@dataclass(frozen=True)
class PassStats:
    """How much one pass read."""

    input_records: int
    dead_letters: int
    aggregates: int
    seconds: float

    @property
    def records(self) -> int:
        return self.input_records + self.dead_letters + self.aggregates


class TopicReader:
    """Every partition of one topic, read from a start time (or the beginning) onwards."""

    def __init__(
        self,
        topic: str,
        options: Mapping[str, Any],
        *,
        isolation_level: IsolationLevel,
        since_ms: int | None = None,
        until_ms: int | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.topic = topic
        self._since_ms = since_ms
        self._until_ms = until_ms
        self._policy = policy or RetryPolicy(budget=60.0)
        self._options = {
            **options,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": isolation_level,
            "max_partition_fetch_bytes": 16 * 1024 * 1024,
            "fetch_max_bytes": 64 * 1024 * 1024,
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._until: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        """Connect, assign every partition and seek to the start of the audited range."""
        consumer = self._consumer = AIOKafkaConsumer(**self._options)
        try:
            await retry("connect", self._connect, policy=self._policy)
        except RetriesExhaustedError as exc:
            servers = self._options.get("bootstrap_servers")
            if isinstance(servers, list):
                servers = ",".join(servers)
            raise KafkaUnavailableError(
                f"cannot reach Kafka at {servers} (last error: {exc.__cause__}). Is the broker "
                "running? Set --bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS."
            ) from exc
        partitions = await retry("metadata", self._partitions_of, policy=self._policy)
        self._partitions = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(self._partitions)
        if self._since_ms is None:
            await consumer.seek_to_beginning(*self._partitions)
        else:
            starts = await self._offsets_at(self._since_ms)
            for tp in self._partitions:
                offset = starts.get(tp)
                if offset is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, offset)
        if self._until_ms is not None:
            # No offset at or after the end time: the whole partition is in the range.
            self._until = {
                tp: offset
                for tp, offset in (await self._offsets_at(self._until_ms)).items()
                if offset is not None
            }

    @property
    def _started(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _connect(self) -> None:
        with kafka_errors(f"connecting to Kafka to audit {self.topic}"):
            await self._started.start()

    async def _partitions_of(self) -> set[int]:
        with kafka_errors(f"reading the partitions of {self.topic}"):
            # The consumer's own cache knows only assigned topics: ask the cluster.
            cluster = await self._started._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(self.topic)
        if not found:
            raise ConfigError(
                f"topic {self.topic!r} does not exist (check the --topic, "
                "--aggregates-topic and --dlq-topic settings)"
            )
        return set(found)

    async def _offsets_at(self, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        with kafka_errors(f"looking up offsets of {self.topic} by time"):
            found = await self._started.offsets_for_times(
                dict.fromkeys(self._partitions, timestamp_ms)
            )
        return {tp: (None if hit is None else hit.offset) for tp, hit in found.items()}

    async def ends(self) -> dict[TopicPartition, int]:
        """Where each partition ends now (the last stable offset under read_committed),
        or where the audited time range ends, whichever is first."""
        with kafka_errors(f"reading the end offsets of {self.topic}"):
            ends: dict[TopicPartition, int] = await self._started.end_offsets(self._partitions)
        for tp, until in self._until.items():
            ends[tp] = min(ends[tp], until)
        return ends

    async def read_to(
        self, ends: Mapping[TopicPartition, int], feed: Callable[[ConsumerRecord[Any, Any]], None]
    ) -> int:
        """Feed every record up to ``ends`` (exclusive) to ``feed``; return how many."""
        consumer = self._started
        pending = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
        consumer.resume(*pending)
        consumer.pause(*(set(self._partitions) - pending))
        fed = 0
        progress = time.monotonic()
        while pending:
            with kafka_errors(f"reading {self.topic}"):
                batches = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS, max_records=_BATCH)
            for tp, records in batches.items():
                end = ends[tp]
                for record in records:
                    if record.offset >= end:
                        break
                    feed(record)
                    fed += 1
            for tp in list(pending):
                # Under read_committed the position skips aborted records and markers.
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
                    # Anything fetched beyond the end is read again by the next pass.
                    consumer.seek(tp, ends[tp])
            if batches:
                progress = time.monotonic()
            elif time.monotonic() - progress > _STALL_SECONDS:
                log.warning(
                    "partitions_stalled",
                    topic=self.topic,
                    partitions=sorted(tp.partition for tp in pending),
                )
                break
        return fed


async def audit_pass(
    ledger: Ledger, input: TopicReader, dead_letters: TopicReader, aggregates: TopicReader
) -> PassStats:
    """Read each topic up to where it ended at the start of the pass, into ``ledger``."""
    started = time.monotonic()
    aggregate_ends = await aggregates.ends()
    dead_letter_ends = await dead_letters.ends()
    input_ends = await input.ends()

    def on_input(record: ConsumerRecord[Any, Any]) -> None:
        ledger.add_input(record.partition, record.offset, record.value)

    def on_dead_letter(record: ConsumerRecord[Any, Any]) -> None:
        ledger.add_dead_letter(record.value, record.headers)

    def on_aggregate(record: ConsumerRecord[Any, Any]) -> None:
        ledger.add_aggregate(record.value)

    inputs = await input.read_to(input_ends, on_input)
    dead = await dead_letters.read_to(dead_letter_ends, on_dead_letter)
    aggs = await aggregates.read_to(aggregate_ends, on_aggregate)
    return PassStats(inputs, dead, aggs, time.monotonic() - started)
