"""Reliability specification of the processor service against the real broker.

Every test runs ``python -m sensorstream.processor`` subprocesses on private topics
with 1 s windows, feeds them readings whose per-sensor ``seq`` runs 0..N-1, and
checks the aggregates: deduplicated by (sensor, window_start), their counts must add
up to what was produced and their seq ranges must tile 0..N-1 in window order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer
from processor_support import (
    Topics,
    counts,
    deduplicated,
    make_input,
    overcounted,
    produce_readings,
    read_aggregates,
    seq_gaps,
    start_processor,
    stop_all,
    wait_for_aggregates,
)

from sensorstream.schema import DeadLetterHeaders, encode_reading
from sensorstream.schema.testing import malformed_corpus

SENSORS = 12
PER_SENSOR = 250  # 3,000 events, 5 s of event time per sensor at 20 ms steps
RATE = 600.0


def assert_complete(
    aggregates: list,
    sensors: int = SENSORS,
    per_sensor: int = PER_SENSOR,
    *,
    restarted: bool = True,
) -> None:
    """Every seq of every sensor in exactly one window; no aggregate counts a reading twice."""
    assert [] == overcounted(aggregates, exact=not restarted)
    per = deduplicated(aggregates)
    assert {f"sensor-{s:04d}": per_sensor for s in range(sensors)} == counts(per)
    assert {} == {s: gaps for s, aggs in per.items() if (gaps := seq_gaps(aggs, per_sensor))}


class TestKillAndRestart:
    async def test_no_event_lost_after_kill_9(self, kafka_bootstrap: str, tmp_path: Path) -> None:
        """kill -9 mid-stream and a restart: every produced event is in an aggregate."""
        topics = Topics.fresh("kill9")
        await make_input(kafka_bootstrap, topics)
        first = start_processor(kafka_bootstrap, topics, tmp_path)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, per_sensor=PER_SENSOR, rate=RATE
                )
            )
            await asyncio.sleep(2.5)
            first.kill()
            second = start_processor(kafka_bootstrap, topics, tmp_path)
            processors.append(second)
            sent = await producing
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, sent)
            assert_complete(aggregates)
        finally:
            stop_all(processors)


class TestGracefulRestart:
    async def test_sigterm_restart_processes_each_event_once(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """SIGTERM and restart: each aggregate once, each event handled once, exit 0."""
        topics = Topics.fresh("sigterm")
        await make_input(kafka_bootstrap, topics)
        handled = tmp_path / "handled.txt"
        handler = {"SENSORSTREAM_HANDLER": "recording_handler:RecordingHandler"}
        env = {"TEST_HANDLED_LOG": str(handled), **handler}
        first = start_processor(kafka_bootstrap, topics, tmp_path, **env)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, per_sensor=PER_SENSOR, rate=RATE
                )
            )
            await asyncio.sleep(2.5)
            assert 0 == await first.terminate()
            second = start_processor(kafka_bootstrap, topics, tmp_path, **env)
            processors.append(second)
            sent = await producing
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, sent)
            assert_complete(aggregates)
            windows = [(a.sensor_id, a.window_start) for a in aggregates]
            assert len(set(windows)) == len(windows)
            assert 0 == await second.terminate()
            event_ids = [line.split()[0] for line in handled.read_text().splitlines()]
            assert (sent, sent) == (len(event_ids), len(set(event_ids)))
        finally:
            stop_all(processors)


class TestScaling:
    async def test_scale_1_3_1_loses_nothing_and_keeps_order(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Scaling 1 -> 3 -> 1 replicas while producing: nothing lost, per-sensor order kept."""
        topics = Topics.fresh("scale")
        await make_input(kafka_bootstrap, topics)
        per_sensor = 400  # ~8 s of production
        first = start_processor(kafka_bootstrap, topics, tmp_path)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, per_sensor=per_sensor, rate=RATE
                )
            )
            await asyncio.sleep(1.5)
            extra = [start_processor(kafka_bootstrap, topics, tmp_path) for _ in range(2)]
            processors.extend(extra)
            await asyncio.gather(*(p.wait_ready() for p in extra))
            await asyncio.sleep(2.0)
            assert [0, 0] == [await p.terminate() for p in extra]
            sent = await producing
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, sent)
            assert_complete(aggregates, per_sensor=per_sensor)
            assert first.proc.poll() is None
        finally:
            stop_all(processors)


class TestPoisonEvents:
    async def test_malformed_corpus_goes_to_dlq_and_processor_survives(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Every malformed payload lands in the DLQ with its reason; good ones all count."""
        topics = Topics.fresh("poison")
        await make_input(kafka_bootstrap, topics, partitions=3)
        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        try:
            await processor.wait_ready()
            corpus = [*malformed_corpus(), (None, None)]  # None: a tombstone -> empty
            producer = AIOKafkaProducer(
                bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 * 1024 * 1024
            )
            await producer.start()
            good = 0
            try:
                import time as _time

                from processor_support import reading

                base = int(_time.time() * 1000)
                for i, (_, payload) in enumerate(corpus):
                    for sensor in range(3):
                        r = reading(sensor, i, base, 20)
                        await producer.send_and_wait(
                            topics.input, encode_reading(r), key=r.sensor_id.encode()
                        )
                        good += 1
                    await producer.send_and_wait(
                        topics.input,
                        payload,
                        key=f"bad-{i}".encode(),
                        headers=[("test-index", str(i).encode())],
                    )
            finally:
                await producer.stop()
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, good)
            assert_complete(aggregates, sensors=3, per_sensor=len(corpus), restarted=False)

            from kafka_helpers import consume_all

            dead = await consume_all(kafka_bootstrap, topics.dlq, timeout=20)
            expected = {
                f"bad-{i}".encode(): ("empty" if reason is None else reason.value, payload)
                for i, (reason, payload) in enumerate(corpus)
            }
            actual = {
                r.key: (
                    DeadLetterHeaders.from_kafka_headers(r.headers).reason.value,
                    r.value if r.value is not None else None,
                )
                for r in dead
            }
            assert expected == actual
            assert all(
                ("test-index", str(i).encode()) in r.headers
                for i, r in enumerate(sorted(dead, key=lambda r: int(r.key.decode().split("-")[1])))
            )
            assert processor.proc.poll() is None
            assert (200, 200) == (processor.get("/healthz")[0], processor.get("/readyz")[0])
            assert 1 == processor.metric("sensorstream_processor_rebalances_total")
        finally:
            stop_all([processor])


class TestSlowHandler:
    async def test_handler_slower_than_poll_interval_causes_no_redelivery(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """A handler sleeping past max_poll_interval: each event handled once, one rebalance."""
        topics = Topics.fresh("slow")
        await make_input(kafka_bootstrap, topics, partitions=3)
        handled = tmp_path / "handled.txt"
        processor = start_processor(
            kafka_bootstrap,
            topics,
            tmp_path,
            SENSORSTREAM_HANDLER="recording_handler:RecordingHandler",
            SENSORSTREAM_MAX_POLL_INTERVAL="3",
            SENSORSTREAM_SESSION_TIMEOUT="6",
            TEST_HANDLED_LOG=str(handled),
            TEST_SLOW_SEQS="10",
            TEST_SLOW_SECONDS="5",
        )
        try:
            await processor.wait_ready()
            sent = await produce_readings(
                kafka_bootstrap, topics.input, sensors=6, per_sensor=60, rate=300
            )
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, sent)
            assert_complete(aggregates, sensors=6, per_sensor=60, restarted=False)
            event_ids = [line.split()[0] for line in handled.read_text().splitlines()]
            assert (sent, sent) == (len(event_ids), len(set(event_ids)))
            assert 1 == processor.metric("sensorstream_processor_rebalances_total")
        finally:
            stop_all([processor])


class TestExactlyOnce:
    async def test_read_committed_sees_each_aggregate_once_after_kill_9(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """exactly_once: kill -9 and restart; a read_committed reader sees no duplicate."""
        topics = Topics.fresh("eos")
        await make_input(kafka_bootstrap, topics)
        env = {"SENSORSTREAM_GUARANTEE": "exactly_once"}
        first = start_processor(kafka_bootstrap, topics, tmp_path, **env)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, per_sensor=PER_SENSOR, rate=RATE
                )
            )
            await asyncio.sleep(2.5)
            first.kill()
            second = start_processor(kafka_bootstrap, topics, tmp_path, **env)
            processors.append(second)
            sent = await producing
            aggregates = await wait_for_aggregates(
                kafka_bootstrap, topics.aggregates, sent, isolation_level="read_committed"
            )
            assert_complete(aggregates)
            windows = [(a.sensor_id, a.window_start) for a in aggregates]
            assert len(set(windows)) == len(windows)
            uncommitted = await read_aggregates(kafka_bootstrap, topics.aggregates)
            assert len(uncommitted) >= len(aggregates)
        finally:
            stop_all(processors)
