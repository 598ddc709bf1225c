"""The sink's migrations on a real PostgreSQL: versioned, idempotent, safe to race.

Debian's PostgreSQL has no TimescaleDB, so what runs here is the plain layout (the
TimescaleDB variant's SQL is checked in tests/unit/sink/test_sink_schema.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from processor_support import Topics
from sink_support import SinkDatabase, start_sink

from kafka_helpers import create_topic
from sensorstream.schema import FatalError
from sensorstream.sink._schema import migrate


class TestMigrate:
    async def test_two_at_once_do_not_race(self, sink_db: SinkDatabase) -> None:
        """Two sinks migrating an empty database at the same moment: one applies both steps,
        the other waits for the advisory lock and finds nothing to do."""
        first, second = await sink_db.connect(), await sink_db.connect()
        try:
            states = await asyncio.gather(migrate(first, "auto"), migrate(second, "auto"))
        finally:
            await first.close()
            await second.close()
        applied = sorted(state.applied for state in states)
        assert [(), ("0001_tables", "0002_time_layout")] == applied
        assert {(2, "plain")} == {(state.version, state.layout) for state in states}
        versions = [(v, name, layout) for v, name, layout, _ in await sink_db.migrations()]
        assert [(1, "tables", "plain"), (2, "time_layout", "plain")] == versions

    async def test_second_run_is_a_no_op(self, sink_db: SinkDatabase) -> None:
        """Migrating an up-to-date schema applies nothing and leaves schema_migrations as it was."""
        conn = await sink_db.connect()
        try:
            await migrate(conn, "auto")
            before = await sink_db.migrations()
            again = await migrate(conn, "auto")
        finally:
            await conn.close()
        assert ((), before) == (again.applied, await sink_db.migrations())

    async def test_changed_migration_is_refused(self, sink_db: SinkDatabase) -> None:
        """A database whose recorded checksum differs from the file: FatalError naming it."""
        conn = await sink_db.connect()
        try:
            await migrate(conn, "auto")
            await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
            with pytest.raises(FatalError, match="0001_tables was applied with other contents"):
                await migrate(conn, "auto")
        finally:
            await conn.close()

    async def test_newer_schema_is_refused(self, sink_db: SinkDatabase) -> None:
        """A database migrated by a newer sink (a version this one does not know): FatalError."""
        conn = await sink_db.connect()
        try:
            await migrate(conn, "auto")
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, layout, checksum) "
                "VALUES (3, 'future', 'plain', 'x')"
            )
            with pytest.raises(FatalError, match="newer than this sink knows"):
                await migrate(conn, "auto")
        finally:
            await conn.close()

    async def test_plain_layout_objects(self, sink_db: SinkDatabase) -> None:
        """The plain layout has the time index and aggregates_hourly as a view that answers."""
        conn = await sink_db.connect()
        try:
            await migrate(conn, "auto")
            kind = await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE relname = 'aggregates_hourly'"
            )
            index = await conn.fetchval("SELECT to_regclass('aggregates_window_start')::text")
            rows = await conn.fetch("SELECT * FROM aggregates_hourly")
        finally:
            await conn.close()
        assert ("v", "aggregates_window_start", []) == (kind, index, rows)


class TestSinkStartUp:
    async def test_two_sinks_starting_at_once(
        self, kafka_bootstrap: str, sink_db: SinkDatabase, tmp_path: Path
    ) -> None:
        """Two real sinks started together on an empty database both become ready, the
        schema is migrated once; a third start later applies nothing."""
        topics = Topics.fresh("sink-migrate")
        for topic in (topics.aggregates, topics.alerts):
            # Three partitions each: every one of the three sinks gets some (range assignor).
            await create_topic(kafka_bootstrap, topic, 3)
        sinks = [start_sink(kafka_bootstrap, topics, sink_db, tmp_path) for _ in range(2)]
        try:
            await asyncio.gather(*(sink.wait_ready(within=60) for sink in sinks))
            third = start_sink(kafka_bootstrap, topics, sink_db, tmp_path)
            sinks.append(third)
            await third.wait_ready(within=60)
            codes = [await sink.terminate() for sink in sinks]
        finally:
            for sink in sinks:
                if sink.proc.poll() is None:
                    sink.proc.kill()
                    sink.proc.wait(10)
        applied = [[e["migration"] for e in s.events("migration_applied")] for s in sinks]
        ready = [[e["applied"] for e in s.events("schema_ready")] for s in sinks]
        assert [0, 0, 0] == codes
        assert [["0001_tables", "0002_time_layout"], []] == sorted(
            applied[:2], key=len, reverse=True
        )
        assert ([], [[2], [0], [0]]) == (applied[2], sorted(ready, reverse=True))
        assert 2 == len(await sink_db.migrations())
