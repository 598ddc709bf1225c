"""Helpers for the sink's tests: the sink subprocess, its database, the pipeline run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pgctl
from aiokafka.admin import AIOKafkaAdminClient
from processor_support import (
    ALERTING,
    Processor,
    Topics,
    end_offsets,
    expected_alerts,
    free_port,
    make_input,
    produce_readings,
    seq_gaps,
    start_processor,
    wait_until,
)

from sensorstream.schema import WindowAggregate

SENSORS = 8
PER_SENSOR = 300
"""The pipeline run's input: 8 sensors x 300 readings, 20 ms apart in event time, so
each sensor spans 6 s: about seven 1 s windows each, and every 7th reading alerts."""


# --------------------------------------------------------------------------- the database


@dataclass(frozen=True)
class SinkDatabase:
    """One database of the test server, as the sink's user sees it."""

    server: pgctl.PostgresServer
    name: str

    def env(self) -> dict[str, str]:
        """The sink's ``SENSORSTREAM_DATABASE_*`` for this database (password by file)."""
        return {**self.server.sink_environment(), "SENSORSTREAM_DATABASE_NAME": self.name}

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.server.host,
            port=self.server.port,
            user=self.server.user,
            password=self.server.password,
            database=self.name,
        )

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.connect()
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await self.connect()
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def has_table(self, name: str) -> bool:
        return bool(await self.fetchval("SELECT to_regclass($1) IS NOT NULL", name))

    async def total_count(self) -> int:
        """Readings the stored windows hold (0 before the sink made the table)."""
        if not await self.has_table("aggregates"):
            return 0
        return int(await self.fetchval("SELECT coalesce(sum(count), 0) FROM aggregates"))

    async def windows(self) -> dict[str, list[WindowAggregate]]:
        """Per sensor, its stored windows in order, as the processor's value objects."""
        rows = await self.fetch(
            """
            SELECT sensor_id,
                   (extract(epoch FROM window_start) * 1000)::bigint AS window_start,
                   (extract(epoch FROM window_end) * 1000)::bigint AS window_end,
                   count, temperature_min, temperature_max, temperature_mean,
                   humidity_min, humidity_max, humidity_mean, first_seq, last_seq
            FROM aggregates ORDER BY sensor_id, window_start
            """
        )
        per_sensor: dict[str, list[WindowAggregate]] = defaultdict(list)
        for row in rows:
            per_sensor[row["sensor_id"]].append(WindowAggregate(**dict(row)))
        return dict(per_sensor)

    async def alerts(self) -> list[tuple[str, str, str]]:
        """Every stored alert as (sensor_id, event_id, kind), sorted."""
        rows = await self.fetch("SELECT sensor_id, event_id::text, kind FROM alerts")
        return sorted((r["sensor_id"], r["event_id"], r["kind"]) for r in rows)

    async def offsets(self) -> dict[tuple[str, int], int]:
        """``sink_offsets``: (topic, partition) -> the next offset the database has."""
        if not await self.has_table("sink_offsets"):
            return {}
        rows = await self.fetch("SELECT topic, partition, next_offset FROM sink_offsets")
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def revised(self) -> int:
        """Rows whose contents changed after they were first written (both tables)."""
        return int(
            await self.fetchval(
                "SELECT (SELECT count(*) FROM aggregates WHERE revisions > 0) "
                "+ (SELECT count(*) FROM alerts WHERE revisions > 0)"
            )
        )

    async def migrations(self) -> list[tuple[int, str, str, str]]:
        """``schema_migrations`` as (version, name, layout, applied_at), in order."""
        rows = await self.fetch(
            "SELECT version, name, layout, applied_at::text FROM schema_migrations ORDER BY 1"
        )
        return [(r["version"], r["name"], r["layout"], r["applied_at"]) for r in rows]


def seq_problems(
    windows: dict[str, list[WindowAggregate]], per_sensor: int
) -> dict[str, list[str]]:
    """Per sensor, what is wrong with its stored windows' seq coverage: every seq 0..N-1 in
    exactly one window, each window's count equal to its seq span (empty when all is well)."""
    problems = {
        sensor: found for sensor, aggs in windows.items() if (found := seq_gaps(aggs, per_sensor))
    }
    return problems


# --------------------------------------------------------------------------- the sink process


@dataclass
class Sink(Processor):
    """A ``sensorstream-sink`` subprocess (the processor's helper, with the sink's /readyz)."""

    group: str = ""

    def assigned(self) -> frozenset[int]:
        """Partitions of both topics this member has (as ``role:partition`` hashes)."""
        try:
            status, body = self.get("/readyz")
        except OSError:
            return frozenset()
        if status != 200:
            return frozenset()
        by_role = orjson.loads(body)["assigned_partitions"]
        return frozenset(hash((role, p)) for role, parts in by_role.items() for p in parts)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, orjson.loads(body)

    async def readyz_async(self) -> tuple[int, dict[str, Any]]:
        return await asyncio.to_thread(self.readyz)


def start_sink(
    bootstrap: str,
    topics: Topics,
    db: SinkDatabase,
    tmp_path: Path,
    *extra: str,
    group: str | None = None,
    **env: str,
) -> Sink:
    port = free_port()
    group = group or f"{topics.group}-sink"
    log_path = tmp_path / f"sink-{uuid.uuid4().hex[:6]}.log"
    full_env = {
        **os.environ,
        **db.env(),
        "SENSORSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "SENSORSTREAM_AGGREGATES_TOPIC": topics.aggregates,
        "SENSORSTREAM_ALERTS_TOPIC": topics.alerts,
        "SENSORSTREAM_GROUP_ID": group,
        "SENSORSTREAM_METRICS_PORT": str(port),
        "SENSORSTREAM_LOG_FORMAT": "json",
        "SENSORSTREAM_BATCH_TIME": "0.2",
        "SENSORSTREAM_SESSION_TIMEOUT": "6",
        "SENSORSTREAM_HEARTBEAT_INTERVAL": "1",
        "SENSORSTREAM_SUMMARY_INTERVAL": "2",
        **env,
    }
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sensorstream.sink", *extra],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Sink(proc=proc, port=port, log_path=log_path, env=full_env, group=group)


async def group_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets: (topic, partition) -> offset (absent: none yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        (tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0
    }


async def commits_ahead_of_database(bootstrap: str, group: str, db: SinkDatabase) -> list[str]:
    """Partitions whose committed Kafka offset is beyond what the database has: the one
    thing the sink must never do. Kafka is read first: the database's offsets only grow."""
    committed = await group_offsets(bootstrap, group)
    stored = await db.offsets()
    return [
        f"{topic}-{partition}: committed {offset} > database {stored.get((topic, partition), 0)}"
        for (topic, partition), offset in sorted(committed.items())
        if offset > stored.get((topic, partition), 0)
    ]


async def output_ends(bootstrap: str, topics: Topics) -> dict[tuple[str, int], int]:
    """The end offsets of the aggregates and alerts topics, keyed like ``sink_offsets``."""
    ends: dict[tuple[str, int], int] = {}
    for topic in (topics.aggregates, topics.alerts):
        for partition, end in (await end_offsets(bootstrap, topic)).items():
            if end > 0:
                ends[topic, partition] = end
    return ends


async def wait_for_database(
    bootstrap: str, topics: Topics, db: SinkDatabase, expected: int, *, within: float = 90.0
) -> None:
    """Until the stored windows hold ``expected`` readings and the database has every
    record of both output topics (as ``sink_offsets`` says)."""
    await wait_until(
        db.total_count,
        lambda total: total >= expected,
        within=within,
        what=f"{expected} readings in the aggregates table",
    )
    ends = await output_ends(bootstrap, topics)

    async def probe() -> dict[tuple[str, int], int]:
        return await db.offsets()

    await wait_until(
        probe,
        lambda stored: all(stored.get(where, 0) >= end for where, end in ends.items()),
        within=within,
        what=f"sink_offsets at the topics' ends {ends}",
    )


# --------------------------------------------------------------------------- the pipeline run


@dataclass
class PipelineRun:
    """What ``run_pipeline`` left behind, for the tests to check."""

    db: SinkDatabase
    topics: Topics
    produced: int
    sensors: int
    per_sensor: int
    bootstrap: str
    sink: Sink
    sink_exit: int
    expected_alerts: list[tuple[str, str, str]]
    ends: dict[tuple[str, int], int]
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    """The sink group's offsets after the sink stopped."""


async def run_pipeline(bootstrap: str, db: SinkDatabase, tmp_path: Path) -> PipelineRun:
    """Produce ``SENSORS`` x ``PER_SENSOR`` readings through a real processor and a real sink
    into ``db``, wait until the database has all of it, then SIGTERM the sink."""
    topics = Topics.fresh("sink")
    await make_input(bootstrap, topics, partitions=3)
    processor = start_processor(bootstrap, topics, tmp_path, **ALERTING)
    sink: Sink | None = None
    try:
        await processor.wait_ready()
        sink = start_sink(bootstrap, topics, db, tmp_path)
        await sink.wait_ready(within=60)
        produced = await produce_readings(
            bootstrap, topics.input, sensors=SENSORS, per_sensor=PER_SENSOR, rate=2000
        )
        await wait_for_database(bootstrap, topics, db, produced.readings)
        ends = await output_ends(bootstrap, topics)
        sink_exit = await sink.terminate()
        return PipelineRun(
            db=db,
            topics=topics,
            produced=produced.readings,
            sensors=SENSORS,
            per_sensor=PER_SENSOR,
            bootstrap=bootstrap,
            sink=sink,
            sink_exit=sink_exit,
            expected_alerts=await expected_alerts(bootstrap, topics),
            ends=ends,
            committed=await group_offsets(bootstrap, sink.group),
        )
    finally:
        for proc in (processor, sink):
            if proc is not None and proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait(10)
