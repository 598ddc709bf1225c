"""``sensorstream lag``: per consumer group and partition, how far behind it is.

For each partition a group reads: its committed offset, the end offset (high watermark,
and the last stable offset a ``read_committed`` reader stops at), the lag in events (end
minus the next offset the group will read) and in seconds (now minus the timestamp of
that next record, the oldest one not yet processed; 0 when caught up), and the member
that owns it now (``-``: none).

Which groups: ``--group`` (repeatable); without it the processor's group
(``SENSORSTREAM_GROUP_ID``, else its default) and every group with commits on one of the
pipeline's topics (``--topic``, ``--aggregates-topic``, ... as ``sensorstream topics``
has them). A group's rows are every partition of every topic it has commits on or is
assigned; a group with neither is shown on the input topic, from its log start.

Reading lag never joins a group and never commits: admin requests (ListGroups,
DescribeGroups, OffsetFetch), ListOffsets, and one fetch per lagging partition from
a consumer without a group.

Exit statuses: 0 done (and no partition over ``--max-lag``); 1 a partition's lag is over
``--max-lag`` events (with ``--watch``: in the last refresh before Ctrl-C); 2 a bad
option; 3 Kafka unreachable or refusing us.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import for_code
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from sensorstream.processor.settings import DEFAULT_GROUP_ID
from sensorstream.runtime import (
    ENV_PREFIX,
    ConfigError,
    RetryPolicy,
    client_options,
    connect_admin,
    kafka_errors,
    retry,
)

from ._connection import EXIT_FOUND, EXIT_OK, CliSettings, connection, fail, run
from ._topics import (
    AggregatesOption,
    AlertsOption,
    DlqOption,
    JsonOption,
    TopicOption,
    configured_topology,
)

__all__ = [
    "GroupLag",
    "LagReport",
    "Owner",
    "PartitionLag",
    "exit_status",
    "format_seconds",
    "lag",
    "lag_events",
    "next_offset",
    "over_max_lag",
    "render_json",
    "render_tables",
    "seconds_behind",
]

TIMESTAMP_WAIT = 3.0
"""Seconds to wait for the record at a group's next offset (its timestamp is the lag in
seconds); a partition whose record does not come in time shows ``?``."""


# --------------------------------------------------------------------------- arithmetic


def next_offset(committed: int | None, start: int) -> int:
    """The offset the group reads next: its commit, or the log start if it has none or
    retention deleted the committed record (the processor resets to earliest)."""
    return start if committed is None else max(committed, start)


def lag_events(committed: int | None, start: int, end: int) -> int:
    """Records between the group's next offset and the end of the partition."""
    return max(0, end - next_offset(committed, start))


def seconds_behind(lag: int, oldest_timestamp_ms: int | None, now: float) -> float | None:
    """``now`` minus the oldest unprocessed record's timestamp; 0 when caught up, None if
    that record could not be read (a clock ahead of ours counts as 0, not negative)."""
    if lag == 0:
        return 0.0
    if oldest_timestamp_ms is None or oldest_timestamp_ms < 0:
        return None
    return max(0.0, now - oldest_timestamp_ms / 1000)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class Owner:
    """The group member a partition is assigned to."""

    client_id: str
    host: str
    member_id: str

    def __str__(self) -> str:
        return f"{self.client_id}@{self.host}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionLag:
    """One partition as one group sees it."""

    topic: str
    partition: int
    committed: int | None
    """The group's committed offset; None: no commit on this partition."""
    start: int
    """Log start offset (the oldest record retention kept)."""
    end: int
    """High watermark."""
    stable: int | None
    """Last stable offset (a read_committed reader's end)."""
    lag_seconds: float | None
    owner: Owner | None

    @property
    def lag(self) -> int:
        return lag_events(self.committed, self.start, self.end)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLag:
    """A consumer group, its state and its partitions."""

    group: str
    state: str
    members: int
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_seconds(self) -> float | None:
        """The largest lag in seconds (None if any lagging partition's is unknown)."""
        values = [p.lag_seconds for p in self.partitions]
        if any(value is None for value in values):
            return None
        return max((value for value in values if value is not None), default=0.0)


@dataclass(frozen=True, slots=True)
class LagReport:
    groups: tuple[GroupLag, ...]
    taken_at: float
    """When the end offsets were read (seconds since the epoch)."""


def over_max_lag(report: LagReport, max_lag: int | None) -> list[tuple[str, PartitionLag]]:
    """(group, partition) of every partition more than ``max_lag`` events behind."""
    if max_lag is None:
        return []
    return [(g.group, p) for g in report.groups for p in g.partitions if p.lag > max_lag]


def exit_status(report: LagReport, max_lag: int | None) -> int:
    return EXIT_FOUND if over_max_lag(report, max_lag) else EXIT_OK


def format_seconds(seconds: float | None) -> str:
    """``?`` unknown, ``0``, ``4.2s``, ``3m05s``, ``2h03m``, ``3d04h``."""
    if seconds is None:
        return "?"
    if seconds == 0:
        return "0"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3600:02d}h"


def _offset(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_tables(report: LagReport) -> RenderableType:
    """A table per group: a row per partition and a total row."""
    tables = []
    for group in report.groups:
        members = f"{group.members} member" + ("" if group.members == 1 else "s")
        table = Table(
            title=f"{group.group} ({group.state}, {members})",
            title_justify="left",
            show_footer=True,
        )
        table.add_column("topic", footer="total")
        table.add_column("partition", justify="right")
        table.add_column("committed", justify="right")
        table.add_column("end", justify="right")
        table.add_column("lag", justify="right", footer=str(group.lag))
        table.add_column("lag (s)", justify="right", footer=format_seconds(group.lag_seconds))
        table.add_column("owner")
        for p in group.partitions:
            end = str(p.end) if p.stable in (None, p.end) else f"{p.end} (stable {p.stable})"
            table.add_row(
                p.topic,
                str(p.partition),
                _offset(p.committed),
                end,
                str(p.lag),
                format_seconds(p.lag_seconds),
                "-" if p.owner is None else str(p.owner),
            )
        tables.append(table)
    return Group(*tables)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def render_json(report: LagReport, *, indent: int | None = 2) -> str:
    """The report for scripts (``owner`` null: no member owns the partition; seconds to
    the millisecond)."""
    document = {
        "taken_at": _iso(report.taken_at),
        "groups": [
            {
                "group": g.group,
                "state": g.state,
                "members": g.members,
                "lag": g.lag,
                "lag_seconds": _rounded(g.lag_seconds),
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "start": p.start,
                        "end": p.end,
                        "stable": p.stable,
                        "lag": p.lag,
                        "lag_seconds": _rounded(p.lag_seconds),
                        "owner": None
                        if p.owner is None
                        else {
                            "client_id": p.owner.client_id,
                            "host": p.owner.host,
                            "member_id": p.owner.member_id,
                        },
                    }
                    for p in g.partitions
                ],
            }
            for g in report.groups
        ],
    }
    return json.dumps(document, indent=indent)


# --------------------------------------------------------------------------- Kafka


@dataclass(frozen=True, slots=True)
class _Description:
    state: str
    members: int
    owners: dict[TopicPartition, Owner]


def _assigned(assignment: bytes) -> list[TopicPartition]:
    """The partitions in a consumer-protocol member assignment ([] if not one)."""
    if not assignment:
        return []
    try:
        return list(ConsumerProtocolMemberAssignment.decode(assignment).partitions())
    except Exception:  # another protocol's bytes: this member owns no partition we know
        return []


def _described_group(entry: Sequence[Any]) -> tuple[str, _Description]:
    """One group of a DescribeGroups response (any version)."""
    error_code, group, state, protocol_type, _protocol, members = entry[:6]
    if error_code:
        with kafka_errors(f"describing consumer group {group!r}"):
            raise for_code(error_code)(f"describing consumer group {group!r}")
    owners = {}
    for member_id, client_id, client_host, _metadata, assignment in members:
        if protocol_type not in ("consumer", ""):
            continue
        owner = Owner(client_id=client_id, host=client_host.lstrip("/"), member_id=member_id)
        for tp in _assigned(assignment):
            owners[tp] = owner
    return group, _Description(state=state, members=len(members), owners=owners)


class LagProbe:
    """Reads :class:`LagReport` snapshots; one per command, reused by every refresh."""

    def __init__(
        self, settings: CliSettings, *, pipeline: Sequence[str], default_group: str
    ) -> None:
        self._settings = settings
        self._pipeline = list(pipeline)
        self._default_group = default_group
        self._policy = RetryPolicy(budget=settings.startup_timeout)
        self._admin: AIOKafkaAdminClient | None = None
        self._readers: list[AIOKafkaConsumer] = []

    async def __aenter__(self) -> LagProbe:
        self._admin = await connect_admin(self._settings)
        options = client_options(self._settings)
        try:
            for isolation in ("read_uncommitted", "read_committed"):
                reader = AIOKafkaConsumer(
                    **options,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    isolation_level=isolation,
                )
                self._readers.append(reader)
                with kafka_errors("connecting a consumer"):
                    await reader.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        for reader in self._readers:
            await reader.stop()
        if self._admin is not None:
            await self._admin.close()

    @property
    def admin(self) -> AIOKafkaAdminClient:
        assert self._admin is not None, "LagProbe used outside 'async with'"
        return self._admin

    async def snapshot(self, groups: Sequence[str] | None) -> LagReport:
        return await retry("read consumer lag", lambda: self._snapshot(groups), policy=self._policy)

    async def _snapshot(self, explicit: Sequence[str] | None) -> LagReport:
        groups = list(dict.fromkeys(explicit)) if explicit else await self._discover()
        offsets = dict(zip(groups, await asyncio.gather(*map(self._offsets, groups)), strict=True))
        described = await self._describe(groups)
        topics_of = {
            group: sorted(
                {tp.topic for tp in offsets[group]} | {tp.topic for tp in described[group].owners}
                or {self._pipeline[0]}
            )
            for group in groups
        }
        partitions = await self._partitions({t for ts in topics_of.values() for t in ts})
        tps = [tp for tps in partitions.values() for tp in tps]
        reader, stable_reader = self._readers
        with kafka_errors("reading partition offsets"):
            starts = await reader.beginning_offsets(tps) if tps else {}
            ends = await reader.end_offsets(tps) if tps else {}
            stables = await stable_reader.end_offsets(tps) if tps else {}
        taken_at = time.time()
        wanted = {
            (tp, next_offset(offsets[group].get(tp), starts[tp]))
            for group in groups
            for topic in topics_of[group]
            for tp in partitions.get(topic, [])
            if lag_events(offsets[group].get(tp), starts[tp], ends[tp]) > 0
        }
        timestamps = await self._timestamps(wanted)
        report = []
        for group in groups:
            description = described[group]
            rows = []
            for topic in topics_of[group]:
                for tp in partitions.get(topic, []):
                    committed = offsets[group].get(tp)
                    lag = lag_events(committed, starts[tp], ends[tp])
                    oldest = timestamps.get((tp, next_offset(committed, starts[tp])))
                    rows.append(
                        PartitionLag(
                            topic=tp.topic,
                            partition=tp.partition,
                            committed=committed,
                            start=starts[tp],
                            end=ends[tp],
                            stable=stables.get(tp),
                            lag_seconds=seconds_behind(lag, oldest, taken_at),
                            owner=description.owners.get(tp),
                        )
                    )
            report.append(
                GroupLag(
                    group=group,
                    state=description.state,
                    members=description.members,
                    partitions=tuple(rows),
                )
            )
        return LagReport(groups=tuple(report), taken_at=taken_at)

    async def _discover(self) -> list[str]:
        """The processor's group, then every group with commits on a pipeline topic."""
        with kafka_errors("listing consumer groups"):
            listed = await self.admin.list_consumer_groups()
        # An empty group id is legal for old clients but cannot be described.
        names = sorted({entry[0] for entry in listed if entry[0] and entry[1] in ("consumer", "")})
        committed = await asyncio.gather(*map(self._readable_offsets, names))
        pipeline = set(self._pipeline)
        found = [
            name
            for name, offsets in zip(names, committed, strict=True)
            if any(tp.topic in pipeline for tp in offsets)
        ]
        return list(dict.fromkeys([self._default_group, *found]))

    async def _readable_offsets(self, group: str) -> dict[TopicPartition, int]:
        """A listed group's commits; none if we may not read them (not ours to show)."""
        try:
            return await self._offsets(group)
        except ConfigError:  # GroupAuthorizationFailed: another team's group
            return {}

    async def _offsets(self, group: str) -> dict[TopicPartition, int]:
        with kafka_errors(f"reading the committed offsets of group {group!r}"):
            committed = await self.admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}

    async def _describe(self, groups: Sequence[str]) -> dict[str, _Description]:
        # One group per request: aiokafka 0.14 misreads a DescribeGroups response holding
        # several (every group after the first comes out shifted).
        with kafka_errors("describing consumer groups"):
            responses = await asyncio.gather(
                *(self.admin.describe_consumer_groups([group]) for group in groups)
            )
        described = dict(
            _described_group(response.groups[0])
            for per_group in responses
            for response in per_group
        )
        return {
            group: described.get(group, _Description(state="Dead", members=0, owners={}))
            for group in groups
        }

    async def _partitions(self, topics: Iterable[str]) -> dict[str, list[TopicPartition]]:
        """The partitions of each of ``topics`` that exists."""
        names = sorted(topics)
        if not names:
            return {}
        with kafka_errors("describing topics"):
            described = await self.admin.describe_topics(names)
        return {
            t["topic"]: sorted(TopicPartition(t["topic"], p["partition"]) for p in t["partitions"])
            for t in described
            if not t.get("error_code")
        }

    async def _timestamps(
        self, wanted: Iterable[tuple[TopicPartition, int]]
    ) -> dict[tuple[TopicPartition, int], int]:
        """The timestamp of the first record at or after each (partition, offset)."""
        pending = sorted(wanted)
        found: dict[tuple[TopicPartition, int], int] = {}
        reader = self._readers[0]
        while pending:
            # One offset per partition per round (two groups may be at different ones).
            batch: dict[TopicPartition, int] = {}
            later = []
            for tp, offset in pending:
                if tp in batch:
                    later.append((tp, offset))
                else:
                    batch[tp] = offset
            found.update(await self._first_records(reader, batch))
            pending = later
        return found

    @staticmethod
    async def _first_records(
        reader: AIOKafkaConsumer, at: Mapping[TopicPartition, int]
    ) -> dict[tuple[TopicPartition, int], int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMESTAMP_WAIT
        found: dict[tuple[TopicPartition, int], int] = {}
        with kafka_errors("reading the oldest unprocessed records"):
            reader.assign(list(at))
            for tp, offset in at.items():
                reader.seek(tp, offset)
            while len(found) < len(at) and loop.time() < deadline:
                waiting = [tp for tp in at if (tp, at[tp]) not in found]
                batches = await reader.getmany(*waiting, timeout_ms=200)
                for tp, records in batches.items():
                    if records and (tp, at[tp]) not in found:
                        found[(tp, at[tp])] = records[0].timestamp
        return found


# --------------------------------------------------------------------------- command


@dataclass
class _Outcome:
    status: int = EXIT_OK


def _warn_over(report: LagReport, max_lag: int | None) -> None:
    over = over_max_lag(report, max_lag)
    if over:
        worst = ", ".join(f"{g} {p.topic}[{p.partition}] {p.lag}" for g, p in over[:5])
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        print(f"sensorstream: lag over --max-lag {max_lag} events: {worst}{more}", file=sys.stderr)


def _display(as_json: bool, watch: bool, stack: ExitStack) -> Callable[[LagReport], None]:
    """How each report is shown, chosen once: a JSON document, a JSON line per refresh,
    the tables, or the tables redrawn in place."""
    if as_json:
        indent = None if watch else 2
        return lambda report: print(render_json(report, indent=indent), flush=True)
    console = Console(width=None if sys.stdout.isatty() else 160)
    if not watch:
        return lambda report: console.print(render_tables(report))
    live = stack.enter_context(Live(console=console, auto_refresh=False))

    def redraw(report: LagReport) -> None:
        heading = f"lag at {_iso(report.taken_at)} (Ctrl-C to stop)"
        live.update(Group(heading, render_tables(report)), refresh=True)

    return redraw


async def _lag(
    settings: CliSettings,
    *,
    groups: Sequence[str] | None,
    pipeline: Sequence[str],
    as_json: bool,
    watch: bool,
    interval: float,
    max_lag: int | None,
    outcome: _Outcome,
) -> None:
    default_group = os.environ.get(f"{ENV_PREFIX}GROUP_ID") or DEFAULT_GROUP_ID
    async with LagProbe(settings, pipeline=pipeline, default_group=default_group) as probe:
        with ExitStack() as stack:
            show = _display(as_json, watch, stack)
            while True:
                report = await probe.snapshot(groups)
                outcome.status = exit_status(report, max_lag)
                show(report)
                if not watch:
                    _warn_over(report, max_lag)
                    return
                await asyncio.sleep(interval)


def lag(
    ctx: typer.Context,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            help="Consumer group to show (repeatable). Default: the processor's group "
            "(SENSORSTREAM_GROUP_ID, else sensorstream-processor) and every group with "
            "commits on a pipeline topic.",
            show_default=False,
        ),
    ] = None,
    topic: TopicOption = None,
    aggregates_topic: AggregatesOption = None,
    alerts_topic: AlertsOption = None,
    dlq_topic: DlqOption = None,
    as_json: JsonOption = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until Ctrl-C (with --json: a line each).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.2, help="Seconds between refreshes of --watch."),
    ] = 2.0,
    max_lag: Annotated[
        int | None,
        typer.Option(
            "--max-lag",
            min=0,
            help="Exit 1 if any partition is more than this many events behind.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """How far behind each consumer group is, per partition.

    Committed and end offset, lag in events and in seconds (the age of the oldest
    unprocessed record), and the member that owns the partition. Exit 1 if a partition
    is more than --max-lag events behind.
    """
    topology = configured_topology(
        topic=topic,
        aggregates_topic=aggregates_topic,
        alerts_topic=alerts_topic,
        dlq_topic=dlq_topic,
    )
    if group is not None and not all(group):
        fail("--group needs a group id")
    settings = connection(ctx)
    outcome = _Outcome()
    try:
        run(
            _lag(
                settings,
                groups=group,
                pipeline=[spec.name for spec in topology],
                as_json=as_json,
                watch=watch,
                interval=interval,
                max_lag=max_lag,
                outcome=outcome,
            )
        )
    except KeyboardInterrupt:
        if not watch:
            raise
    raise typer.Exit(outcome.status)
