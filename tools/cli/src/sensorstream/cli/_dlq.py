"""``sensorstream dlq list | show | replay``: what is in the dead-letter topic, and putting
it back once the cause is fixed.

Selection (every command): ``--reason`` (repeatable), ``--sensor`` (the record key, which
the producers set to the sensor id, or the value's ``sensor_id``), ``--since`` /
``--until`` (the dead letter's own Kafka timestamp: when it was dead-lettered). ``list``
and ``show`` read the whole DLQ from the beginning (or ``--since``) to where it ends now,
without a consumer group: they commit nothing and disturb nobody.

``replay`` re-produces each selected letter's original key, value and headers (without
our ``sensorstream.dlq.*`` ones) to the input topic (``--to``), marked with
``sensorstream-replays: <n>``: one more than the count the failed record carried. A letter
whose event was replayed ``--max-replays`` times already is skipped, so a poison event
never loops; so is one that cannot be put back as it was (its value was cut to fit the
DLQ, or it lacks our headers). Its position in the DLQ is kept per partition in a consumer
group of its own (``--group``), committed in the same Kafka transaction as the records it
produced (``send_offsets_to_transaction``, transactional id ``<group>.<dlq topic>``): a
rerun starts after the last committed transaction, and a run killed mid-way leaves an
open transaction that the next run's start aborts. Every record is in the target exactly
once for a ``read_committed`` reader. Records the selection leaves out advance the
position too: a replay with another selection needs another ``--group``.

Exit statuses: 0 done; 1 ``replay`` skipped records (or, with ``--dry-run``, would), or
stopped because another replay with the same ``--group`` took over; 2 a bad option or
setting (a topic that does not exist); 3 Kafka unreachable or refusing us.

This module never writes to the DLQ and never commits offsets of a service's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Final, TypeVar

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from rich.console import Console
from rich.table import Table

from sensorstream.runtime import (
    KafkaUnavailableError,
    OwnershipLostError,
    RetriableError,
    RetriesExhaustedError,
    kafka_errors,
    retry,
    startup_policy,
)
from sensorstream.schema import TOPOLOGY, ConfigError, DeadLetterHeaders, DeadLetterReason

from ._connection import EXIT_FOUND, CliSettings, connection, connection_options, fail, run

__all__ = [
    "DeadLetter",
    "DeadLetterCounts",
    "RatePacer",
    "ReplayReport",
    "Selection",
    "dlq_app",
    "parse_duration",
    "parse_moment",
    "render_bytes",
    "replay_count",
]

T = TypeVar("T")

UNREADABLE: Final = "unreadable"
"""The reason shown for a record without readable ``sensorstream.dlq.*`` headers."""
DEFAULT_GROUP: Final = "sensorstream-dlq-replay"
DEFAULT_RATE: Final = 1000.0
DEFAULT_BATCH: Final = 500
TRANSACTION_SECONDS: Final = 1.0
"""A replay transaction is committed after this long, full or not: at a low ``--rate`` a
kill loses (aborts) at most this much work, and it stays far below the broker's
transaction timeout."""
MAX_RECORD_BYTES: Final = 5 * 1024 * 1024
"""The producer's request limit: the DLQ takes records of 4 MiB (topology.toml); the
target topic's own ``max.message.bytes`` may still refuse one."""
_FETCH_TIMEOUT_MS: Final = 500
_STALL_SECONDS: Final = 30.0
_LISTED_SKIPS: Final = 100
_KEY_BYTES: Final = 1024
"""Keys are shown whole up to this size, whatever ``--max-bytes`` says about values."""


# --------------------------------------------------------------------------- options (pure)

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS: Final = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}


def parse_duration(text: str) -> int:
    """Milliseconds of ``90s``, ``15m``, ``1h``, ``1h30m``, ``2d``, ``1w``; a plain number
    is seconds. Raises ``ValueError`` saying what would be valid."""
    compact = text.strip().lower().replace(" ", "")
    if _NUMBER.fullmatch(compact):
        ms = round(float(compact) * 1000)
    else:
        parts = _DURATION_PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(
                f"{text!r} is not a duration: use a number and a unit (ms, s, m, h, d, w), "
                "e.g. 30s, 15m, 1h, 1h30m, 1d; a plain number is seconds"
            ) from None
        ms = round(sum(float(n) * _UNIT_MS[u] for n, u in parts))
    if ms <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return ms


def parse_moment(text: str, *, now_ms: int) -> int:
    """Epoch milliseconds of ``text``: ISO 8601 (UTC unless it gives an offset), Unix
    seconds, or a duration meaning that long before ``now_ms`` (``2h``: two hours ago)."""
    value = text.strip()
    if _NUMBER.fullmatch(value):
        return round(float(value) * 1000)
    if _DURATION_PART.match(value.lower()):
        return now_ms - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2024-05-01T12:00:00Z; UTC unless it "
            "says), Unix seconds (1714564800) or a duration before now (90m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    """``ms`` since the epoch as ISO 8601 UTC, to the millisecond (``...T12:00:00.000Z``)."""
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# ---------------------------------------------------------------------- dead letters (pure)


def replay_count(headers: Iterable[tuple[str, bytes]]) -> int:
    """How often the record was replayed already: its ``sensorstream-replays`` header, 0
    without one. Raises ``ValueError`` if the header is not a whole number >= 0."""
    count = 0
    for name, value in headers:
        if name != DeadLetterHeaders.REPLAYS:
            continue
        text = bytes(value or b"").decode("utf-8", errors="replace")
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"header {name} must be a whole number >= 0, got {text!r}")
        count = max(count, int(text))
    return count


def render_bytes(value: bytes | None, max_bytes: int) -> tuple[str | None, bool, bool]:
    """``value`` as text for people: its first ``max_bytes`` bytes (never a character cut
    in two), as UTF-8 if they are, else with the other bytes escaped (``\\xff``).

    Returns ``(text, truncated, escaped)``; ``text`` is None for a null value.
    """
    if value is None:
        return None, False, False
    truncated = len(value) > max_bytes
    head = value[:max_bytes] if truncated else value
    for drop in range(4 if truncated else 1):  # a cut may split a character of up to 4 bytes
        try:
            return head[: len(head) - drop].decode("utf-8"), truncated, False
        except UnicodeDecodeError:
            continue
    return head.decode("utf-8", errors="backslashreplace"), truncated, True


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One record of the DLQ, its ``sensorstream.dlq.*`` headers decoded."""

    partition: int
    offset: int
    timestamp: int
    """The dead letter's own Kafka timestamp (when it was dead-lettered), epoch ms."""
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    explained: DeadLetterHeaders | None
    """Why and from where; None if the record lacks readable headers (see ``problem``)."""
    problem: str | None = None
    """What is wrong with its headers (then it is never replayed)."""
    replays: int = 0
    """How often the event that failed had been replayed (its ``sensorstream-replays``)."""

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """Decode a consumed DLQ record; a malformed one is kept, with its ``problem``."""
        headers = tuple((name, bytes(value or b"")) for name, value in record.headers or ())
        explained: DeadLetterHeaders | None = None
        problem: str | None = None
        replays = 0
        try:
            explained = DeadLetterHeaders.from_kafka_headers(headers)
            replays = replay_count(headers)
        except ValueError as exc:
            problem = str(exc)
        return cls(
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key,
            value=record.value,
            headers=headers,
            explained=explained,
            problem=problem,
            replays=replays,
        )

    @property
    def reason(self) -> str:
        return UNREADABLE if self.explained is None else self.explained.reason.value

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        """The failed record's own headers: all but ours and its replay count."""
        return [
            (name, value)
            for name, value in self.headers
            if not name.startswith(DeadLetterHeaders.PREFIX) and name != DeadLetterHeaders.REPLAYS
        ]

    def refusal(self, max_replays: int) -> str | None:
        """Why this letter must not be replayed (None: it may be)."""
        if self.explained is None or self.problem is not None:
            return UNREADABLE
        if self.explained.original_size is not None:
            return "truncated"  # the DLQ holds only the head of its value
        if self.replays >= max_replays:
            return "max_replays"
        return None

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The headers of its replay: the original ones, and the count one higher."""
        return [*self.original_headers, (DeadLetterHeaders.REPLAYS, str(self.replays + 1).encode())]

    def sensor_ids(self) -> tuple[str, ...]:
        """The sensor ids this letter may be about: its key, and the value's ``sensor_id``."""
        found = []
        if self.key is not None:
            found.append(self.key.decode("utf-8", errors="replace"))
        if self.value and self.value.lstrip()[:1] == b"{" and b"sensor_id" in self.value:
            try:
                decoded = json.loads(self.value)
            except ValueError:  # not JSON, or not UTF-8
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("sensor_id"), str):
                found.append(decoded["sensor_id"])
        return tuple(found)

    def to_json(self, *, max_bytes: int) -> dict[str, Any]:
        """For ``show --json``: every header decoded, the value cut to ``max_bytes``."""
        value, truncated, escaped = render_bytes(self.value, max_bytes)
        key, _, key_escaped = render_bytes(self.key, max(max_bytes, _KEY_BYTES))
        explained = self.explained
        return {
            "partition": self.partition,
            "offset": self.offset,
            "dead_lettered_at": iso(self.timestamp),
            "timestamp_ms": self.timestamp,
            "reason": self.reason,
            "error": explained.error if explained else None,
            "problem": self.problem,
            "original": None
            if explained is None
            else {
                "topic": explained.original_topic,
                "partition": explained.original_partition,
                "offset": explained.original_offset,
                "timestamp": iso(explained.original_timestamp),
                "timestamp_ms": explained.original_timestamp,
            },
            "instance": explained.instance if explained else None,
            "lateness_ms": explained.lateness_ms if explained else None,
            "original_size": explained.original_size if explained else None,
            "sha256": explained.sha256 if explained else None,
            "replays": self.replays,
            "headers": {
                name: render_bytes(raw, max_bytes)[0] for name, raw in self.original_headers
            },
            "key": key,
            "key_escaped": key_escaped,
            "value": value,
            "value_bytes": None if self.value is None else len(self.value),
            "value_truncated": truncated,
            "value_escaped": escaped,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which dead letters a command works on (an empty field selects everything)."""

    reasons: frozenset[DeadLetterReason] = frozenset()
    sensor: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    """Exclusive: letters dead-lettered before this time."""

    def __post_init__(self) -> None:
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.until_ms <= self.since_ms
        ):
            raise ValueError(
                f"--until ({iso(self.until_ms)}) must be after --since ({iso(self.since_ms)})"
            )

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and (
            letter.explained is None or letter.explained.reason not in self.reasons
        ):
            return False
        if self.since_ms is not None and letter.timestamp < self.since_ms:
            return False
        if self.until_ms is not None and letter.timestamp >= self.until_ms:
            return False
        return self.sensor is None or self.sensor in letter.sensor_ids()

    def to_json(self) -> dict[str, Any]:
        return {
            "reasons": sorted(self.reasons),
            "sensor": self.sensor,
            "since": None if self.since_ms is None else iso(self.since_ms),
            "until": None if self.until_ms is None else iso(self.until_ms),
        }


@dataclass(slots=True)
class DeadLetterCounts:
    """``dlq list``: the selected letters counted by reason, origin and time bucket."""

    bucket_ms: int
    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_origin: Counter[tuple[str, int]] = field(default_factory=Counter)
    by_bucket: Counter[int] = field(default_factory=Counter)
    """Keyed by the bucket's start (epoch ms, buckets aligned to the epoch, so UTC)."""
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, letter: DeadLetter) -> None:
        self.total += 1
        self.by_reason[letter.reason] += 1
        if letter.explained is not None:
            origin = (letter.explained.original_topic, letter.explained.original_partition)
            self.by_origin[origin] += 1
        self.by_bucket[letter.timestamp - letter.timestamp % self.bucket_ms] += 1
        if self.first_ms is None or letter.timestamp < self.first_ms:
            self.first_ms = letter.timestamp
        if self.last_ms is None or letter.timestamp > self.last_ms:
            self.last_ms = letter.timestamp

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "first": None if self.first_ms is None else iso(self.first_ms),
            "last": None if self.last_ms is None else iso(self.last_ms),
            "by_reason": dict(sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_origin": [
                {"topic": topic, "partition": partition, "count": count}
                for (topic, partition), count in sorted(self.by_origin.items())
            ],
            "bucket_seconds": self.bucket_ms / 1000,
            "by_bucket": [
                {"start": iso(start), "start_ms": start, "count": count}
                for start, count in sorted(self.by_bucket.items())
            ],
        }


# --------------------------------------------------------------------------- pacing


class RatePacer:
    """At most ``rate`` records per second on average, from the first. After a pause (a
    transaction's commit) it catches up with at most ``BURST`` seconds' worth of records
    at once; longer idle time is not saved up. ``rate`` None (or 0) is unlimited."""

    BURST: Final = 0.25
    MIN_SLEEP: Final = 0.005
    """Shorter waits are added to the next one: the average holds, without 1 ms sleeps."""

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic):
        if rate is not None and rate < 0:
            raise ValueError(f"a rate must be >= 0 records/s, got {rate!r}")
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._next: float | None = None

    def reserve(self) -> float:
        """Take the next slot: the seconds to wait before its record may go."""
        if not self._interval:
            return 0.0
        now = self._clock()
        slot = now if self._next is None else max(self._next, now - self.BURST)
        self._next = slot + self._interval
        return max(0.0, slot - now)

    async def wait(self) -> None:
        delay = self.reserve()
        if delay >= self.MIN_SLEEP:
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------- reading the DLQ


class IsolationLevel(enum.StrEnum):
    READ_COMMITTED = "read_committed"
    READ_UNCOMMITTED = "read_uncommitted"


async def _kafka(settings: CliSettings, action: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` with client errors translated, a broker that is away retried for
    ``--startup-timeout``; then KafkaUnavailableError saying what to check."""

    async def attempt() -> T:
        with kafka_errors(action):
            return await call()

    try:
        return await retry(action, attempt, policy=startup_policy(settings))
    except RetriesExhaustedError as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap_servers} within "
            f"{settings.startup_timeout:g} s (last error: {exc.__cause__}). Is the "
            "broker running? Set --bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS, or "
            "raise SENSORSTREAM_STARTUP_TIMEOUT."
        ) from exc


class DeadLetterTopic:
    """Every partition of the DLQ, read from chosen offsets up to where it ends now.

    Without ``group_id`` it commits nothing; with one it only reads that group's
    committed offsets (``replay`` commits them through its transactions).
    """

    def __init__(
        self,
        topic: str,
        options: Mapping[str, Any],
        settings: CliSettings,
        *,
        isolation_level: IsolationLevel,
        group_id: str | None = None,
    ) -> None:
        self.topic = topic
        self._settings = settings
        self._options = {
            **options,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": isolation_level.value,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
        }
        self._consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []

    async def _call(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        return await _kafka(self._settings, action, call)

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    async def start(self, *, also_needed: Sequence[str] = ()) -> None:
        """Connect and assign every partition. A missing DLQ (or ``also_needed`` topic)
        is a ConfigError: nothing here creates topics."""

        async def connect() -> AIOKafkaConsumer:
            consumer = AIOKafkaConsumer(**self._options)
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):  # it may never have connected
                    await consumer.stop()
                raise
            return consumer

        self._consumer = await self._call(f"connecting to Kafka to read {self.topic}", connect)
        # The consumer's own metadata knows only assigned topics: ask the cluster.
        cluster = await self._call(
            f"reading the partitions of {self.topic}", self.consumer._client.fetch_all_metadata
        )
        for topic in (self.topic, *also_needed):
            if not cluster.partitions_for_topic(topic):
                raise ConfigError(
                    f"topic {topic!r} does not exist (check --dlq-topic and --to, or create it "
                    "with sensorstream-topics)"
                )
        ids = cluster.partitions_for_topic(self.topic)
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(ids)]
        self.consumer.assign(self.partitions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _offsets_at(self, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        found = await self._call(
            f"looking up offsets of {self.topic} by time",
            lambda: self.consumer.offsets_for_times(dict.fromkeys(self.partitions, timestamp_ms)),
        )
        return {tp: (None if hit is None else hit.offset) for tp, hit in found.items()}

    async def range(
        self, selection: Selection, *, committed: bool = False
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Per partition, where reading starts and ends (exclusive): the beginning, or the
        group's committed offset with ``committed``, or ``--since``, whichever is last; the
        end now (the last stable offset under read_committed), or ``--until``'s."""
        consumer = self.consumer
        starts: dict[TopicPartition, int] = await self._call(
            f"reading where {self.topic} begins",
            lambda: consumer.beginning_offsets(self.partitions),
        )
        ends: dict[TopicPartition, int] = await self._call(
            f"reading where {self.topic} ends", lambda: consumer.end_offsets(self.partitions)
        )
        if committed:
            for tp in self.partitions:
                offset = await self._call(
                    f"reading the committed position of {tp.topic}-{tp.partition}",
                    partial(consumer.committed, tp),
                )
                if offset is not None and offset >= 0:
                    starts[tp] = max(starts[tp], offset)
        if selection.since_ms is not None:
            for tp, offset in (await self._offsets_at(selection.since_ms)).items():
                starts[tp] = max(starts[tp], ends[tp] if offset is None else offset)
        if selection.until_ms is not None:
            for tp, offset in (await self._offsets_at(selection.until_ms)).items():
                if offset is not None:
                    ends[tp] = min(ends[tp], offset)
        return starts, {tp: max(starts[tp], ends[tp]) for tp in self.partitions}

    async def read(
        self, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
    ) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
        """Every record from ``starts`` to ``ends``, each partition in offset order."""
        consumer = self.consumer
        pending = {tp for tp in self.partitions if starts[tp] < ends[tp]}
        for tp in pending:
            consumer.seek(tp, starts[tp])
        consumer.pause(*(set(self.partitions) - pending))
        progress = time.monotonic()
        while pending:
            batches = await self._call(
                f"reading {self.topic}",
                lambda: consumer.getmany(*pending, timeout_ms=_FETCH_TIMEOUT_MS, max_records=1000),
            )
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    yield record
            for tp in list(pending):
                # Under read_committed the position also skips transaction markers.
                position = await self._call(
                    f"reading the position on {self.topic}", partial(consumer.position, tp)
                )
                if position >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            if batches:
                progress = time.monotonic()
            elif time.monotonic() - progress > _STALL_SECONDS:
                raise KafkaUnavailableError(
                    f"reading {self.topic} made no progress for {_STALL_SECONDS:g} s on "
                    f"partitions {sorted(tp.partition for tp in pending)}"
                )


async def _selected(
    settings: CliSettings,
    dlq_topic: str,
    selection: Selection,
    isolation_level: IsolationLevel,
) -> AsyncIterator[DeadLetter]:
    topic = DeadLetterTopic(
        dlq_topic, await connection_options(settings), settings, isolation_level=isolation_level
    )
    try:
        await topic.start()
        starts, ends = await topic.range(selection)
        async for record in topic.read(starts, ends):
            letter = DeadLetter.from_record(record)
            if selection.matches(letter):
                yield letter
    finally:
        await topic.stop()


async def count_letters(
    settings: CliSettings,
    dlq_topic: str,
    selection: Selection,
    isolation_level: IsolationLevel,
    bucket_ms: int,
) -> DeadLetterCounts:
    counts = DeadLetterCounts(bucket_ms)
    async for letter in _selected(settings, dlq_topic, selection, isolation_level):
        counts.add(letter)
    return counts


async def first_letters(
    settings: CliSettings,
    dlq_topic: str,
    selection: Selection,
    isolation_level: IsolationLevel,
    limit: int,
) -> list[DeadLetter]:
    """The ``limit`` (0: all) selected letters dead-lettered first."""

    def order(letter: DeadLetter) -> tuple[int, int, int]:
        return (letter.timestamp, letter.partition, letter.offset)

    found: list[DeadLetter] = []
    async for letter in _selected(settings, dlq_topic, selection, isolation_level):
        found.append(letter)
        if limit and len(found) > 2 * limit:  # bounded memory for a large DLQ
            found = sorted(found, key=order)[:limit]
    found.sort(key=order)
    return found[:limit] if limit else found


# --------------------------------------------------------------------------- replay


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, with ``--dry-run``, would do)."""

    dlq_topic: str
    to: str
    group: str
    dry_run: bool
    max_replays: int
    selection: Selection
    examined: int = 0
    replayed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_letters: list[dict[str, Any]] = field(default_factory=list)
    transactions: int = 0
    seconds: float = 0.0

    def skip(self, letter: DeadLetter, why: str) -> None:
        self.skipped[why] += 1
        if len(self.skipped_letters) < _LISTED_SKIPS:
            self.skipped_letters.append(
                {
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "reason": letter.reason,
                    "replays": letter.replays,
                    "why": why,
                }
            )

    @property
    def exit_status(self) -> int:
        return EXIT_FOUND if self.skipped else 0

    def to_json(self) -> dict[str, Any]:
        replayed = sum(self.replayed.values())
        return {
            "dlq_topic": self.dlq_topic,
            "to": self.to,
            "group": self.group,
            "dry_run": self.dry_run,
            "max_replays": self.max_replays,
            "selection": self.selection.to_json(),
            "examined": self.examined,
            "selected": replayed + sum(self.skipped.values()),
            "replayed": replayed,
            "replayed_by_reason": dict(sorted(self.replayed.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_letters": self.skipped_letters,
            "transactions": self.transactions,
            "seconds": round(self.seconds, 3),
            "rate": (
                round(replayed / self.seconds, 1)
                if self.seconds and replayed and not self.dry_run
                else None
            ),
        }


def transactional_id(group: str, dlq_topic: str) -> str:
    """One per group and DLQ: a second replay with the same group fences the first."""
    return f"{group}.{dlq_topic}"


class TransactionalReplayer:
    """The replayed records and the DLQ position they reach, in one transaction a batch."""

    def __init__(self, options: Mapping[str, Any], *, group: str, dlq_topic: str) -> None:
        self._group = group
        self._producer = AIOKafkaProducer(
            **options,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=MAX_RECORD_BYTES,
            transactional_id=transactional_id(group, dlq_topic),
        )
        self._futures: list[asyncio.Future[Any]] = []
        self._in_transaction = False
        self._fenced = False
        self.began = 0.0
        self.sent = 0

    async def start(self, settings: CliSettings) -> None:
        """Start and begin the first transaction. Beginning waits for InitProducerId, which
        fences an earlier replay with the same group and aborts the transaction it left
        open: the group's committed position is final once this returns."""
        await _kafka(settings, "starting the replay producer", self._producer.start)
        await self._begin()

    async def _begin(self) -> None:
        if not self._in_transaction:
            with kafka_errors("beginning a replay transaction"):
                await self._producer.begin_transaction()
            self._in_transaction, self.sent = True, 0

    async def send(self, topic: str, letter: DeadLetter) -> None:
        await self._begin()
        if not self.sent:
            self.began = time.monotonic()
        with kafka_errors(f"producing to {topic}"):
            future = await self._producer.send(
                topic, letter.value, key=letter.key, headers=letter.replay_headers()
            )
        self._futures.append(future)
        self.sent += 1

    async def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Wait for every record of the transaction, add ``positions`` and commit."""
        await self._begin()
        try:
            with kafka_errors("committing a replay transaction"):
                await asyncio.gather(*self._futures)
                await self._producer.send_offsets_to_transaction(dict(positions), self._group)
                await self._producer.commit_transaction()
        except OwnershipLostError:
            self._fenced = True
            raise
        self._futures.clear()
        self._in_transaction, self.sent = False, 0

    async def stop(self) -> None:
        """Abort a transaction still open (its records vanish, the position stays)."""
        try:
            if self._in_transaction and not self._fenced:
                # Best effort: if it fails, the next run's start aborts it.
                with contextlib.suppress(Exception):
                    await self._producer.abort_transaction()
        finally:
            await self._producer.stop()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayPlan:
    dlq_topic: str
    to: str
    group: str
    selection: Selection
    isolation_level: IsolationLevel
    max_replays: int
    rate: float | None
    batch: int
    dry_run: bool


async def replay(settings: CliSettings, plan: ReplayPlan) -> ReplayReport:
    """Replay the selected letters from the group's position (see the module doc)."""
    options = await connection_options(settings)
    report = ReplayReport(
        plan.dlq_topic, plan.to, plan.group, plan.dry_run, plan.max_replays, plan.selection
    )
    topic = DeadLetterTopic(
        plan.dlq_topic,
        options,
        settings,
        isolation_level=plan.isolation_level,
        group_id=plan.group,
    )
    replayer: TransactionalReplayer | None = None
    started = time.monotonic()
    try:
        await topic.start(also_needed=[plan.to])
        if not plan.dry_run:
            replayer = TransactionalReplayer(options, group=plan.group, dlq_topic=plan.dlq_topic)
            await replayer.start(settings)
        # Only now: the start above has settled what an interrupted run left open.
        starts, ends = await topic.range(plan.selection, committed=True)
        positions: dict[TopicPartition, int] = {}
        committed = dict(starts)
        pacer = RatePacer(plan.rate)
        first_send: float | None = None  # the rate counts from here
        async for record in topic.read(starts, ends):
            report.examined += 1
            tp = TopicPartition(record.topic, record.partition)
            positions[tp] = record.offset + 1
            letter = DeadLetter.from_record(record)
            if plan.selection.matches(letter):
                why = letter.refusal(plan.max_replays)
                if why is not None:
                    report.skip(letter, why)
                else:
                    report.replayed[letter.reason] += 1
                    if replayer is not None:
                        await pacer.wait()
                        first_send = first_send or time.monotonic()
                        await replayer.send(plan.to, letter)
            if replayer is not None and (
                replayer.sent >= plan.batch
                or (replayer.sent and time.monotonic() - replayer.began >= TRANSACTION_SECONDS)
            ):
                await replayer.commit(positions)
                committed.update(positions)
                report.transactions += 1
        # Read to the end: the position passes trailing transaction markers too.
        positions = {tp: end for tp, end in ends.items() if end > committed[tp]}
        if replayer is not None and positions:
            await replayer.commit(positions)
            report.transactions += 1
        report.seconds = time.monotonic() - (first_send or started)
    except OwnershipLostError as exc:
        fail(
            f"another replay with --group {plan.group} took over ({exc}); it carries on from "
            "the last committed batch",
            EXIT_FOUND,
        )
    except RetriableError as exc:
        raise KafkaUnavailableError(
            f"{exc}; run the same command again to resume after the last committed batch"
        ) from exc
    finally:
        if replayer is not None:
            await replayer.stop()
        await topic.stop()
    return report


# --------------------------------------------------------------------------- output


def _json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if i == len(columns) - 1 else "left")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def _print_counts(console: Console, dlq_topic: str, counts: DeadLetterCounts) -> None:
    if not counts.total:
        console.print(f"No dead letters selected in {dlq_topic}.", markup=False)
        return
    console.print(
        f"{counts.total} dead letters in {dlq_topic}, {iso(counts.first_ms or 0)} .. "
        f"{iso(counts.last_ms or 0)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(_table("By reason", ["reason", "count"], counts.by_reason.most_common()))
    console.print(
        _table(
            "By origin",
            ["topic", "partition", "count"],
            ((t, p, n) for (t, p), n in sorted(counts.by_origin.items())),
        )
    )
    console.print(
        _table(
            f"By time ({counts.bucket_ms / 1000:g} s, UTC)",
            ["from", "count"],
            ((iso(start), n) for start, n in sorted(counts.by_bucket.items())),
        )
    )


def _print_letter(console: Console, letter: DeadLetter, max_bytes: int) -> None:
    shown = letter.to_json(max_bytes=max_bytes)
    lines = [
        f"dlq {letter.partition}/{letter.offset}  {shown['dead_lettered_at']}  {letter.reason}"
        f"  replays {letter.replays}",
        f"  error:  {shown['error']}",
    ]
    if shown["problem"] is not None:
        lines.append(f"  problem: {shown['problem']} (never replayed)")
    if (origin := shown["original"]) is not None:
        lines.append(
            f"  from:   {origin['topic']} {origin['partition']}/{origin['offset']} at "
            f"{origin['timestamp']}, by {shown['instance']}"
        )
    for name in ("lateness_ms", "original_size", "sha256"):
        if shown[name] is not None:
            lines.append(f"  {name}: {shown[name]}")
    for name, value in shown["headers"].items():
        lines.append(f"  header: {name}={value}")
    lines.append(f"  key:    {shown['key']}")
    size = shown["value_bytes"]
    cut = f", first {max_bytes}" if shown["value_truncated"] else ""
    escaped = ", not UTF-8" if shown["value_escaped"] else ""
    lines.append(f"  value ({size} bytes{cut}{escaped}): {shown['value']}")
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _print_replay(console: Console, report: ReplayReport) -> None:
    summary = report.to_json()
    if not report.examined:
        console.print(
            f"nothing to replay: group {report.group} is at the end of {report.dlq_topic}",
            markup=False,
            highlight=False,
        )
        return
    verb = "would replay" if report.dry_run else "replayed"
    by_reason = ", ".join(f"{r} {n}" for r, n in summary["replayed_by_reason"].items())
    rate = f" in {summary['seconds']:g} s ({summary['rate']} records/s)" if summary["rate"] else ""
    console.print(
        f"{verb} {summary['replayed']} of {summary['examined']} dead letters from "
        f"{report.dlq_topic} to {report.to}{rate}" + (f": {by_reason}" if by_reason else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.skipped:
        skipped = ", ".join(f"{why} {n}" for why, n in summary["skipped"].items())
        console.print(f"skipped {sum(report.skipped.values())}: {skipped}", markup=False)
        for entry in report.skipped_letters[:10]:
            console.print(
                f"  {entry['partition']}/{entry['offset']} {entry['reason']} "
                f"(replays {entry['replays']}): {entry['why']}",
                markup=False,
                highlight=False,
            )


# --------------------------------------------------------------------------- the commands

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter topic: what is in it and why (list, show), and putting fixed "
    "events back (replay).",
    no_args_is_help=True,
    add_completion=False,
)

DlqTopic = Annotated[
    str,
    typer.Option(
        "--dlq-topic", envvar="SENSORSTREAM_DLQ_TOPIC", help="The dead-letter topic to read."
    ),
]
Reasons = Annotated[
    list[DeadLetterReason] | None,
    typer.Option(
        "--reason",
        metavar="REASON",
        help=f"Only letters with this reason (repeatable): {', '.join(DeadLetterReason)}.",
        show_choices=False,
    ),
]
Sensor = Annotated[
    str | None,
    typer.Option(
        "--sensor", help="Only letters of this sensor id (the record key, or the value's)."
    ),
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only letters dead-lettered from this time: ISO 8601 (UTC unless it says), Unix "
        "seconds, or a duration before now (2h).",
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Only letters dead-lettered before this time (as --since)."),
]
Isolation = Annotated[
    IsolationLevel,
    typer.Option(
        "--isolation-level",
        help="read_committed skips letters of aborted (and still open) processor transactions.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _selection(
    reasons: Sequence[DeadLetterReason] | None,
    sensor: str | None,
    since: str | None,
    until: str | None,
) -> Selection:
    """The options as a Selection; a bad one exits 2 naming it."""
    now_ms = round(time.time() * 1000)
    moments: dict[str, int | None] = {}
    for name, text in (("--since", since), ("--until", until)):
        try:
            moments[name] = None if text is None else parse_moment(text, now_ms=now_ms)
        except ValueError as exc:
            fail(f"{name}: {exc}")
    try:
        return Selection(
            reasons=frozenset(reasons or ()),
            sensor=sensor,
            since_ms=moments["--since"],
            until_ms=moments["--until"],
        )
    except ValueError as exc:
        fail(str(exc))


@dlq_app.command("list")
def list_letters(
    ctx: typer.Context,
    dlq_topic: DlqTopic = TOPOLOGY.dlq.name,
    reason: Reasons = None,
    sensor: Sensor = None,
    since: Since = None,
    until: Until = None,
    bucket: Annotated[
        str, typer.Option("--bucket", help="Time bucket of the counts: 30s, 15m, 1h, 1d ...")
    ] = "1h",
    isolation_level: Isolation = IsolationLevel.READ_COMMITTED,
    as_json: Json = False,
) -> None:
    """Count the dead letters by reason, by original topic and partition, and over time."""
    selection = _selection(reason, sensor, since, until)
    try:
        bucket_ms = parse_duration(bucket)
    except ValueError as exc:
        fail(f"--bucket: {exc}")
    settings = connection(ctx)
    counts = run(count_letters(settings, dlq_topic, selection, isolation_level, bucket_ms))
    if as_json:
        _json_line(
            {
                "dlq_topic": dlq_topic,
                "isolation_level": isolation_level.value,
                "selection": selection.to_json(),
                **counts.to_json(),
            }
        )
    else:
        _print_counts(Console(), dlq_topic, counts)


@dlq_app.command("show")
def show_letters(
    ctx: typer.Context,
    dlq_topic: DlqTopic = TOPOLOGY.dlq.name,
    reason: Reasons = None,
    sensor: Sensor = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Most letters shown, the oldest first; 0: all.")
    ] = 20,
    max_bytes: Annotated[
        int, typer.Option("--max-bytes", min=1, help="Most bytes of each value (and key) shown.")
    ] = 200,
    isolation_level: Isolation = IsolationLevel.READ_COMMITTED,
    as_json: Json = False,
) -> None:
    """Show the dead letters, oldest first, with their headers decoded and their values.

    With --json, one JSON object a line.
    """
    selection = _selection(reason, sensor, since, until)
    settings = connection(ctx)
    letters = run(first_letters(settings, dlq_topic, selection, isolation_level, limit))
    console = Console()
    for letter in letters:
        if as_json:
            _json_line(letter.to_json(max_bytes=max_bytes))
        else:
            _print_letter(console, letter, max_bytes)
    if not letters and not as_json:
        console.print(f"No dead letters selected in {dlq_topic}.", markup=False)


@dlq_app.command("replay")
def replay_letters(
    ctx: typer.Context,
    dlq_topic: DlqTopic = TOPOLOGY.dlq.name,
    to: Annotated[
        str,
        typer.Option(
            "--to", "--topic", envvar="SENSORSTREAM_TOPIC", help="Where the events go back to."
        ),
    ] = TOPOLOGY.input.name,
    reason: Reasons = None,
    sensor: Sensor = None,
    since: Since = None,
    until: Until = None,
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="Consumer group that keeps the replay's position in the DLQ; use another one "
            "for another selection.",
        ),
    ] = DEFAULT_GROUP,
    max_replays: Annotated[
        int,
        typer.Option(
            "--max-replays", min=1, help="Skip a letter whose event was replayed this often."
        ),
    ] = 3,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="Most records per second; 0: unlimited.")
    ] = DEFAULT_RATE,
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Most records per transaction.")
    ] = DEFAULT_BATCH,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be replayed; produce nothing.")
    ] = False,
    isolation_level: Isolation = IsolationLevel.READ_COMMITTED,
    as_json: Json = False,
) -> None:
    """Put the selected dead letters' original records back, each exactly once."""
    selection = _selection(reason, sensor, since, until)
    if to == dlq_topic:
        fail(f"--to {to} is the dead-letter topic itself: replay to the input topic")
    plan = ReplayPlan(
        dlq_topic=dlq_topic,
        to=to,
        group=group,
        selection=selection,
        isolation_level=isolation_level,
        max_replays=max_replays,
        rate=rate or None,
        batch=batch,
        dry_run=dry_run,
    )
    settings = connection(ctx)
    report = run(replay(settings, plan))
    if as_json:
        _json_line(report.to_json())
    else:
        _print_replay(Console(), report)
    raise typer.Exit(report.exit_status)
