"""The sink end to end: readings -> real processor -> real sink -> real PostgreSQL.

Every produced seq of every sensor is in exactly one stored window, every alert the
input calls for is stored once, a SIGTERM exits 0 with the Kafka offsets equal to what
the database committed, and a replay (the whole topics consumed again) or a window
re-emitted with other contents do what the upsert promises.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from processor_support import Topics, wait_until
from sink_support import (
    PipelineRun,
    SinkDatabase,
    commits_ahead_of_database,
    seq_problems,
    start_sink,
    wait_for_database,
)

from kafka_helpers import create_topic
from sensorstream.schema import Alert, WindowAggregate, encode_aggregate, encode_alert


def _conflicts(sink_metrics: str, table: str | None, outcome: str) -> float:
    """upsert_conflicts_total{table, outcome} from a /metrics body (table None: both)."""
    total = 0.0
    for line in sink_metrics.splitlines():
        if line.startswith("sensorstream_sink_upsert_conflicts_total{") and (
            (table is None or f'table="{table}"' in line) and f'outcome="{outcome}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


class TestPipeline:
    async def test_every_reading_is_in_exactly_one_stored_window(
        self, pipeline_run: PipelineRun
    ) -> None:
        """Per sensor the windows' counts add up to what was produced, and their seq
        ranges run 0..N-1 without a gap or an overlap."""
        windows = await pipeline_run.db.windows()
        totals = {sensor: sum(w.count for w in aggs) for sensor, aggs in windows.items()}
        expected = {f"sensor-{i:04d}": pipeline_run.per_sensor for i in range(pipeline_run.sensors)}
        assert (expected, {}) == (totals, seq_problems(windows, pipeline_run.per_sensor))

    async def test_every_alert_is_stored_once(self, pipeline_run: PipelineRun) -> None:
        """The alerts table holds exactly the alerts the input calls for."""
        stored = await pipeline_run.db.alerts()
        assert pipeline_run.expected_alerts
        assert pipeline_run.expected_alerts == stored

    async def test_nothing_was_written_twice(self, pipeline_run: PipelineRun) -> None:
        """No stored row changed its contents after it was first written."""
        assert 0 == await pipeline_run.db.revised()

    async def test_sigterm_commits_what_the_database_has(self, pipeline_run: PipelineRun) -> None:
        """SIGTERM: exit 0, and the group's offsets are where the database's are: at the
        end of both topics."""
        stored = await pipeline_run.db.offsets()
        assert (0, pipeline_run.ends, pipeline_run.ends) == (
            pipeline_run.sink_exit,
            stored,
            pipeline_run.committed,
        )
        assert [] == pipeline_run.sink.events("service_failed")

    async def test_replay_changes_nothing(self, pipeline_run: PipelineRun, tmp_path: Path) -> None:
        """A sink of a new group reads both topics again from the start: every row is found
        stored with the same contents, none is written, none counts twice."""
        db = pipeline_run.db
        before = (await db.windows(), await db.alerts())
        rows = sum(len(w) for w in before[0].values()) + len(before[1])
        replay = start_sink(
            pipeline_run.bootstrap,
            pipeline_run.topics,
            db,
            tmp_path,
            group=f"replay-{uuid.uuid4().hex[:8]}",
        )
        try:
            await replay.wait_ready(within=60)
            await wait_until(
                lambda: asyncio.to_thread(replay.get, "/metrics"),
                lambda response: _conflicts(response[1], None, "identical") >= rows,
                within=60,
                what=f"{rows} identical upserts",
            )
            _, metrics = replay.get("/metrics")
            identical = _conflicts(metrics, None, "identical")
            changed = _conflicts(metrics, None, "changed")
            written = await replay.metric_async("sensorstream_sink_rows_written_total")
        finally:
            exit_code = await replay.terminate()
        after = (await db.windows(), await db.alerts())
        assert (rows, 0.0, 0.0, 0, True) == (
            identical,
            written,
            changed,
            exit_code,
            before == after,
        )
        assert 0 == await db.revised()


T0 = int(time.time() * 1000) // 1000 * 1000


def _window(sensor: str, index: int, count: int = 5) -> WindowAggregate:
    return WindowAggregate(
        sensor_id=sensor,
        window_start=T0 + index * 1000,
        window_end=T0 + (index + 1) * 1000,
        count=count,
        temperature_min=20.0,
        temperature_max=21.0 + count,
        temperature_mean=20.5,
        humidity_min=40.0,
        humidity_max=50.0,
        humidity_mean=45.0,
        first_seq=index * 5,
        last_seq=index * 5 + count - 1,
    )


class TestReemission:
    async def test_other_contents_replace_the_row_and_are_counted(
        self, kafka_bootstrap: str, sink_db: SinkDatabase, tmp_path: Path
    ) -> None:
        """A window arriving again with other contents: the latest is kept, its revisions
        bumped and the upsert_conflicts{changed} metric counts it; an identical one and a
        repeated alert change nothing."""
        from aiokafka import AIOKafkaProducer

        topics = Topics.fresh("sink-reemit")
        for topic in (topics.aggregates, topics.alerts):
            await create_topic(kafka_bootstrap, topic, 1)
        alert = Alert(
            sensor_id="sensor-0001",
            kind="humidity_high",
            value=95.0,
            threshold=90.0,
            event_time=T0 + 10,
            event_id=str(uuid.uuid4()),
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        sink = start_sink(kafka_bootstrap, topics, sink_db, tmp_path)
        try:

            async def send(*records: tuple[str, bytes]) -> None:
                for topic, value in records:
                    await producer.send_and_wait(topic, value, key=b"sensor-0001")

            await send(
                (topics.aggregates, encode_aggregate(_window("sensor-0001", 0))),
                (topics.aggregates, encode_aggregate(_window("sensor-0001", 1))),
                (topics.alerts, encode_alert(alert)),
            )
            await sink.wait_ready(within=60)
            await wait_for_database(kafka_bootstrap, topics, sink_db, 10, within=60)
            # The same window 0 again, window 1 with one reading less, the alert again.
            await send(
                (topics.aggregates, encode_aggregate(_window("sensor-0001", 0))),
                (topics.aggregates, encode_aggregate(_window("sensor-0001", 1, count=4))),
                (topics.alerts, encode_alert(alert)),
            )
            await wait_for_database(kafka_bootstrap, topics, sink_db, 9, within=60)
            await wait_until(
                lambda: asyncio.to_thread(sink.get, "/metrics"),
                lambda response: _conflicts(response[1], "aggregates", "changed") >= 1,
                within=30,
                what="the changed window counted",
            )
            _, metrics = sink.get("/metrics")
        finally:
            await producer.stop()
            await sink.terminate()
        rows = await sink_db.fetch("SELECT count, revisions FROM aggregates ORDER BY window_start")
        alert_rows = await sink_db.fetch("SELECT revisions FROM alerts")
        actual = (
            [(r["count"], r["revisions"]) for r in rows],
            [r["revisions"] for r in alert_rows],
            _conflicts(metrics, "aggregates", "changed"),
            _conflicts(metrics, "aggregates", "identical"),
            _conflicts(metrics, "alerts", "identical"),
        )
        assert ([(5, 0), (4, 1)], [0], 1.0, 1.0, 1.0) == actual
        assert [] == await commits_ahead_of_database(kafka_bootstrap, sink.group, sink_db)
