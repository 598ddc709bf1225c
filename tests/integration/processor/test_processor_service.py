"""Reliability specification of the processor service against the real broker.

Every test runs ``python -m sensorstream.processor`` subprocesses on private topics
with 1 s windows, feeds them readings whose per-sensor ``seq`` runs 0..N-1, and
checks every aggregate emitted: each counts exactly the readings of its seq range, a
window emitted again (only an at-least-once replay may) is identical, and the distinct
windows tile 0..N-1 in window order. The tests that stop or kill a processor mid-stream
also mix malformed payloads into the input and set an alert threshold, and check that
no alert and no dead letter went missing over the restart.

Nothing waits a fixed time before a kill: each test waits until the group has
committed on every partition (so the killed instance had done work that counts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from processor_support import (
    ALERTING,
    Processor,
    Topics,
    aborted_records,
    committed_offsets,
    counts,
    emission_problems,
    end_offsets,
    expected_alerts,
    make_input,
    open_transactions,
    produce_readings,
    read_alerts,
    read_dead_letters,
    replay_until,
    seq_gaps,
    start_processor,
    stop_all,
    wait_for_aggregates,
    wait_for_assignment,
    wait_for_commits,
    wait_until,
    windows,
)

from sensorstream.schema import DeadLetterHeaders, WindowAggregate, decode_aggregate, encode_reading
from sensorstream.schema.testing import malformed_corpus

SENSORS = 12
PER_SENSOR = 250  # 3,000 events, 5 s of event time per sensor at 20 ms steps
RATE = 600.0
PARTITIONS = 6
POISON_EVERY = 100  # 30 malformed payloads among the 3,000 readings
CONSUMED = "sensorstream_processor_events_consumed_total"
REPLAYED = 'sensorstream_processor_events_total{outcome="replayed"}'


def assert_complete(
    aggregates: list[WindowAggregate],
    sensors: int = SENSORS,
    per_sensor: int = PER_SENSOR,
    *,
    once: bool = False,
) -> None:
    """Every emitted aggregate is whole and a repeated window identical (with ``once``: no
    window repeated); the distinct windows hold every seq of every sensor exactly once."""
    assert [] == emission_problems(aggregates, once=once)
    per = windows(aggregates)
    assert {f"sensor-{s:04d}": per_sensor for s in range(sensors)} == counts(per)
    assert {} == {s: gaps for s, aggs in per.items() if (gaps := seq_gaps(aggs, per_sensor))}


async def consumed_at_least(processor: Processor, events: int, *, within: float = 30.0) -> None:
    """Wait until ``processor`` has consumed ``events`` records."""
    await wait_until(
        lambda: processor.metric_async(CONSUMED),
        lambda n: n >= events,
        within=within,
        what=f"{events} events consumed by the processor on port {processor.port}",
    )


OpenTransactions = dict[tuple[str, int], tuple[int, int]]


async def kill_holding_a_transaction(
    processor: Processor,
    open_now: Callable[[], Awaitable[OpenTransactions]],
    *,
    within: float = 30.0,
) -> OpenTransactions:
    """kill -9 ``processor`` at a moment a transaction of its outputs is open, and return
    what it left open. Seeing a transaction open and then killing races the commit in
    between, so the member is frozen first (SIGSTOP) and the transaction looked at once
    no commit of it can be in flight any more; if none is open, it is thawed and tried
    again."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not await open_now():
            await asyncio.sleep(0.05)
            continue
        processor.freeze()
        await asyncio.sleep(0.5)  # an EndTxn sent just before the stop lands by now
        left_open = await open_now()
        if left_open:
            processor.kill()
            return left_open
        processor.thaw()
    raise AssertionError(f"no transaction of outputs held open within {within}s")


class TestKillAndRestart:
    async def test_no_event_lost_after_kill_9(self, kafka_bootstrap: str, tmp_path: Path) -> None:
        """kill -9 mid-stream once every partition has a commit: the next instance resumes
        each partition at its committed offset and replays up to the replay mark; every
        reading, alert and dead letter is in the output."""
        topics = Topics.fresh("kill9")
        await make_input(kafka_bootstrap, topics)
        first = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap,
                    topics.input,
                    sensors=SENSORS,
                    per_sensor=PER_SENSOR,
                    rate=RATE,
                    poison_every=POISON_EVERY,
                )
            )
            await wait_for_commits(kafka_bootstrap, topics, partitions=PARTITIONS)
            first.kill()
            at_kill = await committed_offsets(kafka_bootstrap, topics)
            second = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
            processors.append(second)
            produced = await producing
            aggregates = await wait_for_aggregates(
                kafka_bootstrap, topics.aggregates, produced.readings
            )
            assert_complete(aggregates)

            # The second instance started where the first had committed, not at 0 and
            # not at the end: it consumed exactly the records from the commits on, and
            # re-read (without emitting) those up to each commit's replay mark.
            ends = await end_offsets(kafka_bootstrap, topics.input)
            committed = {p: offset for p, (offset, _) in at_kill.items()}
            replay = sum(replay_until(meta) - offset for offset, meta in at_kill.values())
            assert (committed, sum(ends[p] - committed[p] for p in ends), replay) == (
                second.resumed_from(),
                await second.metric_async(CONSUMED),
                await second.metric_async(REPLAYED),
            )
            assert [True] * PARTITIONS == [0 < committed[p] < ends[p] for p in sorted(ends)]
            assert 0 < replay

            # At least once: every alert and dead letter is there, repeats allowed.
            alerts = await read_alerts(kafka_bootstrap, topics.alerts)
            dead = await read_dead_letters(kafka_bootstrap, topics.dlq)
            assert (await expected_alerts(kafka_bootstrap, topics), sorted(produced.poison)) == (
                sorted(set(alerts)),
                sorted(set(dead)),
            )
        finally:
            stop_all(processors)


class TestGracefulRestart:
    async def test_sigterm_restart_processes_each_event_once(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """SIGTERM and restart: each aggregate, alert and dead letter once, each event
        handled once, exit 0."""
        topics = Topics.fresh("sigterm")
        await make_input(kafka_bootstrap, topics)
        handled = tmp_path / "handled.txt"
        handler = {"SENSORSTREAM_HANDLER": "recording_handler:RecordingHandler"}
        env = {"TEST_HANDLED_LOG": str(handled), **handler, **ALERTING}
        first = start_processor(kafka_bootstrap, topics, tmp_path, **env)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap,
                    topics.input,
                    sensors=SENSORS,
                    per_sensor=PER_SENSOR,
                    rate=RATE,
                    poison_every=POISON_EVERY,
                )
            )
            await wait_for_commits(kafka_bootstrap, topics, partitions=PARTITIONS)
            assert 0 == await first.terminate()
            second = start_processor(kafka_bootstrap, topics, tmp_path, **env)
            processors.append(second)
            produced = await producing
            sent = produced.readings
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, sent)
            assert_complete(aggregates, once=True)
            alerts = await read_alerts(kafka_bootstrap, topics.alerts)
            dead = await read_dead_letters(kafka_bootstrap, topics.dlq)
            assert (await expected_alerts(kafka_bootstrap, topics), sorted(produced.poison)) == (
                sorted(alerts),
                sorted(dead),
            )
            assert 0 == await second.terminate()
            event_ids = [line.split()[0] for line in handled.read_text().splitlines()]
            assert (sent, sent) == (len(event_ids), len(set(event_ids)))
        finally:
            stop_all(processors)


class TestScaling:
    async def test_scale_1_3_1_moves_partitions_loses_nothing_and_keeps_order(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Scaling 1 -> 3 -> 1 replicas while producing: the partitions spread over the
        three (each has some, none twice) and all come back to the one; nothing lost,
        per-sensor order kept."""
        topics = Topics.fresh("scale")
        await make_input(kafka_bootstrap, topics)
        first = start_processor(kafka_bootstrap, topics, tmp_path)
        processors = [first]
        scaled_back = asyncio.Event()
        try:
            alone = await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap, topics.input, sensors=SENSORS, until=scaled_back, rate=RATE
                )
            )
            await consumed_at_least(first, 600)
            extra = [start_processor(kafka_bootstrap, topics, tmp_path) for _ in range(2)]
            processors.extend(extra)
            spread = await wait_for_assignment(processors, PARTITIONS)
            for p in extra:  # each newcomer works on what it was given
                await consumed_at_least(p, 1)
            assert [0, 0] == [await p.terminate() for p in extra]
            [back] = await wait_for_assignment([first], PARTITIONS)
            await consumed_at_least(first, await first.metric_async(CONSUMED) + 300)
            scaled_back.set()
            produced = await producing
            per_sensor = produced.readings // SENSORS
            aggregates = await wait_for_aggregates(
                kafka_bootstrap, topics.aggregates, produced.readings
            )
            assert_complete(aggregates, per_sensor=per_sensor)
            everything = frozenset(range(PARTITIONS))
            assert (everything, everything - spread[0], everything) == (
                alone,
                spread[1] | spread[2],
                back,
            )
            assert first.proc.poll() is None
        finally:
            scaled_back.set()
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
            assert_complete(aggregates, sensors=3, per_sensor=len(corpus), once=True)

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
            produced = await produce_readings(
                kafka_bootstrap, topics.input, sensors=6, per_sensor=60, rate=300
            )
            sent = produced.readings
            aggregates = await wait_for_aggregates(kafka_bootstrap, topics.aggregates, sent)
            assert_complete(aggregates, sensors=6, per_sensor=60, once=True)
            event_ids = [line.split()[0] for line in handled.read_text().splitlines()]
            assert (sent, sent) == (len(event_ids), len(set(event_ids)))
            assert 1 == processor.metric("sensorstream_processor_rebalances_total")
        finally:
            stop_all([processor])


class TestExactlyOnce:
    async def test_kill_9_aborts_the_open_transaction_and_read_committed_sees_each_output_once(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """exactly_once: kill -9 while a transaction holds outputs; the restart aborts it,
        and a read_committed reader sees every aggregate, alert and dead letter exactly
        once, no window partial."""
        topics = Topics.fresh("eos")
        await make_input(kafka_bootstrap, topics)
        env = {"SENSORSTREAM_GUARANTEE": "exactly_once", **ALERTING}
        first = start_processor(kafka_bootstrap, topics, tmp_path, **env)
        processors = [first]
        try:
            await first.wait_ready()
            producing = asyncio.create_task(
                produce_readings(
                    kafka_bootstrap,
                    topics.input,
                    sensors=SENSORS,
                    per_sensor=PER_SENSOR,
                    rate=RATE,
                    poison_every=POISON_EVERY,
                )
            )
            await wait_for_commits(kafka_bootstrap, topics, partitions=PARTITIONS)
            # What the dead instance leaves open: its records sit above the LSO.
            left_open = await kill_holding_a_transaction(
                first, lambda: open_transactions(kafka_bootstrap, topics.outputs)
            )
            second = start_processor(kafka_bootstrap, topics, tmp_path, **env)
            processors.append(second)
            produced = await producing
            aggregates = await wait_for_aggregates(
                kafka_bootstrap,
                topics.aggregates,
                produced.readings,
                isolation_level="read_committed",
            )
            assert_complete(aggregates, once=True)
            alerts = await read_alerts(
                kafka_bootstrap, topics.alerts, isolation_level="read_committed"
            )
            dead = await read_dead_letters(
                kafka_bootstrap, topics.dlq, isolation_level="read_committed"
            )
            assert (await expected_alerts(kafka_bootstrap, topics), sorted(produced.poison)) == (
                sorted(alerts),
                sorted(dead),
            )

            # The restart fenced the dead instance and aborted what it had left open:
            # those records are in the log (read_uncommitted), not in read_committed.
            assert {} == await open_transactions(kafka_bootstrap, topics.outputs)
            aborted = {
                topic: await aborted_records(kafka_bootstrap, topic) for topic in topics.outputs
            }
            thrown_away = [
                (topic, r.partition, r.offset)
                for topic, records in aborted.items()
                for r in records
                if (topic, r.partition) in left_open
                and r.offset >= left_open[topic, r.partition][0]
            ]
            assert 0 < len(thrown_away), f"nothing aborted above the LSOs {left_open}"
            # What the abort threw away was written again, identically, and committed.
            committed = set(aggregates)
            redone = [decode_aggregate(r.value) for r in aborted[topics.aggregates]]
            assert [] == [agg for agg in redone if agg not in committed]
        finally:
            stop_all(processors)
