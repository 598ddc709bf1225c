"""The sink through failures: killed mid-stream, the database stopped for 20 s, members
joining and leaving the group mid-stream.

Both run the real pipeline (producer feed -> processor -> sink -> PostgreSQL) while the
failure happens, then check the same accounting as the end-to-end test: every seq of
every sensor in exactly one stored window, every alert stored once. Meanwhile a
sampler keeps checking the sink's promise about offsets: the group's committed offset
in Kafka is never beyond what ``sink_offsets`` (written in the database transaction)
says the database has.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
from processor_support import (
    ALERTING,
    Topics,
    expected_alerts,
    make_input,
    produce_readings,
    start_processor,
    wait_until,
)
from sink_support import (
    SinkDatabase,
    commits_ahead_of_database,
    seq_problems,
    start_sink,
    wait_for_database,
)

if TYPE_CHECKING:
    from conftest import OutagePostgres

SENSORS = 6
RATE = 400.0
OUTAGE_SECONDS = 20.0


class OffsetSampler:
    """Checks ``commits_ahead_of_database`` every 0.2 s until stopped; keeps what it found."""

    def __init__(self, bootstrap: str, group: str, db: SinkDatabase) -> None:
        self._args = (bootstrap, group, db)
        self.samples = 0
        self.violations: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            # While the database is down there is nothing to compare with: skip the sample.
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self.violations += await commits_ahead_of_database(*self._args)
                self.samples += 1
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _per_sensor(db: SinkDatabase) -> dict[str, int]:
    windows = await db.windows()
    return {sensor: sum(w.count for w in aggs) for sensor, aggs in windows.items()}


class TestSinkCrash:
    async def test_kill_9_mid_stream_loses_and_doubles_nothing(
        self, kafka_bootstrap: str, sink_db: SinkDatabase, tmp_path: Path
    ) -> None:
        """SIGKILL the sink mid-stream, start a new one in the same group: the totals are
        what was produced, no seq is in two windows, no alert twice, and no commit ever ran
        ahead of the database."""
        topics = Topics.fresh("sink-crash")
        await make_input(kafka_bootstrap, topics, partitions=3)
        processor = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
        # Small, frequent batches: many database and Kafka commits to be killed between.
        small = {"SENSORSTREAM_BATCH_SIZE": "50", "SENSORSTREAM_BATCH_TIME": "0.05"}
        first = start_sink(kafka_bootstrap, topics, sink_db, tmp_path, **small)
        second = None
        sampler = OffsetSampler(kafka_bootstrap, first.group, sink_db)
        feeding = asyncio.Event()
        try:
            await processor.wait_ready()
            await first.wait_ready(within=60)
            sampler.start()
            feed = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, until=feeding, rate=RATE
                )
            )
            await wait_until(
                sink_db.total_count,
                lambda n: n >= 400,
                within=60,
                what="the first sink writing for a while",
            )
            first.kill()
            second = start_sink(kafka_bootstrap, topics, sink_db, tmp_path, **small)
            await second.wait_ready(within=60)
            await asyncio.sleep(3)
            feeding.set()
            produced = await feed
            await wait_for_database(kafka_bootstrap, topics, sink_db, produced.readings)
            await sampler.stop()
            assert 0 == await second.terminate()
        finally:
            feeding.set()
            for proc in (processor, first, second):
                if proc is not None and proc.proc.poll() is None:
                    proc.proc.kill()
                    proc.proc.wait(10)
        per_sensor = produced.readings // SENSORS
        windows = await sink_db.windows()
        expected = {f"sensor-{i:04d}": per_sensor for i in range(SENSORS)}
        assert (expected, {}) == (await _per_sensor(sink_db), seq_problems(windows, per_sensor))
        assert await expected_alerts(kafka_bootstrap, topics) == await sink_db.alerts()
        assert (0, [], True) == (await sink_db.revised(), sampler.violations, sampler.samples > 10)
        assert [] == await commits_ahead_of_database(kafka_bootstrap, second.group, sink_db)


class TestDatabaseOutage:
    async def test_database_down_for_20_s_is_waited_out(
        self, kafka_bootstrap: str, outage_postgres: OutagePostgres, tmp_path: Path
    ) -> None:
        """pg_ctl stop -m fast for 20 s while readings flow: the sink stays up, says it is not
        ready, retries, and once the database is back writes everything; nothing is lost."""
        from conftest import fresh_database

        topics = Topics.fresh("sink-outage")
        await make_input(kafka_bootstrap, topics, partitions=3)
        async with fresh_database(outage_postgres.server) as db:
            processor = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
            sink = start_sink(kafka_bootstrap, topics, db, tmp_path)
            sampler = OffsetSampler(kafka_bootstrap, sink.group, db)
            feeding = asyncio.Event()
            try:
                await processor.wait_ready()
                await sink.wait_ready(within=60)
                feed = asyncio.create_task(
                    produce_readings(
                        kafka_bootstrap, topics.input, sensors=SENSORS, until=feeding, rate=RATE
                    )
                )
                await wait_until(
                    db.total_count, lambda n: n >= 300, within=60, what="rows before the outage"
                )
                sampler.start()
                await outage_postgres.stop_async()
                await asyncio.sleep(OUTAGE_SECONDS / 2)
                during = (await sink.readyz_async(), sink.proc.poll())
                await asyncio.sleep(OUTAGE_SECONDS / 2)
                await outage_postgres.start_async()
                await wait_until(
                    lambda: sink.readyz_async(),
                    lambda ready: ready[0] == 200,
                    within=60,
                    what="the sink ready again",
                )
                await asyncio.sleep(2)
                feeding.set()
                produced = await feed
                await wait_for_database(kafka_bootstrap, topics, db, produced.readings)
                await sampler.stop()
                _, metrics = sink.get("/metrics")
                errors = await sink.metric_async("sensorstream_sink_database_errors_total")
                assert 0 == await sink.terminate()
            finally:
                feeding.set()
                for proc in (processor, sink):
                    if proc.proc.poll() is None:
                        proc.proc.kill()
                        proc.proc.wait(10)
            (status, body), exited = during
            assert (503, "disconnected", None) == (status, body["database"], exited)
            retried = [
                line
                for line in metrics.splitlines()
                if line.startswith('sensorstream_sink_retries_total{operation="database"}')
            ]
            assert (True, True) == (errors > 0, bool(retried) and float(retried[0].split()[-1]) > 0)
            per_sensor = produced.readings // SENSORS
            windows = await db.windows()
            expected = {f"sensor-{i:04d}": per_sensor for i in range(SENSORS)}
            assert (expected, {}) == (await _per_sensor(db), seq_problems(windows, per_sensor))
            assert await expected_alerts(kafka_bootstrap, topics) == await db.alerts()
            assert ([], 0) == (sampler.violations, await db.revised())
            assert [] == await commits_ahead_of_database(kafka_bootstrap, sink.group, db)
            assert [] == sink.events("service_failed")


class TestRebalance:
    async def test_members_joining_and_leaving_mid_stream(
        self, kafka_bootstrap: str, sink_db: SinkDatabase, tmp_path: Path
    ) -> None:
        """A second sink joins the group mid-stream, then the first leaves with SIGTERM: the
        partitions move twice, and still every seq is in exactly one window, every alert
        stored once, no commit ahead of the database."""
        topics = Topics.fresh("sink-rebalance")
        await make_input(kafka_bootstrap, topics, partitions=3)
        processor = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
        small = {"SENSORSTREAM_BATCH_SIZE": "50", "SENSORSTREAM_BATCH_TIME": "0.05"}
        first = start_sink(kafka_bootstrap, topics, sink_db, tmp_path, **small)
        second = None
        sampler = OffsetSampler(kafka_bootstrap, first.group, sink_db)
        feeding = asyncio.Event()
        try:
            await processor.wait_ready()
            await first.wait_ready(within=60)
            sampler.start()
            feed = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, until=feeding, rate=RATE
                )
            )
            await wait_until(sink_db.total_count, lambda n: n >= 300, within=60, what="rows")
            second = start_sink(kafka_bootstrap, topics, sink_db, tmp_path, **small)
            await second.wait_ready(within=60)
            await wait_until(
                first.assigned_async,
                lambda parts: 0 < len(parts) < 6,
                within=60,
                what="the first sink sharing the partitions",
            )
            await asyncio.sleep(2)
            assert 0 == await first.terminate()
            await asyncio.sleep(2)
            feeding.set()
            produced = await feed
            await wait_for_database(kafka_bootstrap, topics, sink_db, produced.readings)
            await sampler.stop()
            assert 0 == await second.terminate()
        finally:
            feeding.set()
            for proc in (processor, first, second):
                if proc is not None and proc.proc.poll() is None:
                    proc.proc.kill()
                    proc.proc.wait(10)
        per_sensor = produced.readings // SENSORS
        windows = await sink_db.windows()
        expected = {f"sensor-{i:04d}": per_sensor for i in range(SENSORS)}
        assert (expected, {}) == (await _per_sensor(sink_db), seq_problems(windows, per_sensor))
        assert await expected_alerts(kafka_bootstrap, topics) == await sink_db.alerts()
        assert (0, [], True) == (await sink_db.revised(), sampler.violations, sampler.samples > 10)
        assert first.events("partitions_revoked"), "the first sink never gave partitions up"
