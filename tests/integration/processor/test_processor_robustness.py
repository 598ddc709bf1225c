"""Robustness specification of the processor against the real broker: hostile event
times, late readings, oversized records and transient output errors.

Each test feeds live readings (event time = the wall clock, per-sensor ``seq`` from 0)
to ``sensorstream-processor`` subprocesses and checks the per-sensor ``seq`` accounting
of the whole run (:class:`processor_support.SeqLedger`): every produced reading is in
exactly one aggregate or in the dead-letter topic, none is lost, none counted twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from processor_support import (
    ALERTING,
    LiveFeed,
    Topics,
    expected_alerts,
    make_input,
    read_alerts,
    seq_ledger,
    settled_ledger,
    start_processor,
    stop_all,
    wait_until,
)

from kafka_helpers import consume_all, create_topic
from sensorstream.schema import DeadLetterHeaders

FAR_FUTURE_MS = 4_070_908_800_000  # 2099-01-01, inside the schema's event-time range


class TestEventTimeSanity:
    async def test_far_future_reading_is_dead_lettered_and_the_partition_goes_on(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """A reading stamped 2099 goes to the DLQ (future_event_time); all later ones,
        also after a restart, are aggregated. The restart repeats no alert and no dead
        letter, and loses none."""
        topics = Topics.fresh("future")
        await make_input(kafka_bootstrap, topics, partitions=1)
        first = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
        processors = [first]
        try:
            await first.wait_ready()
            async with LiveFeed(kafka_bootstrap, topics.input, sensors=4) as feed:
                await feed.run(2.0, rate=200)
                bad = await feed.send(0, event_time=FAR_FUTURE_MS)
                await feed.run(2.0, rate=200)
                assert 0 == await first.terminate()
                second = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
                processors.append(second)
                await second.wait_ready()
                await feed.run(2.0, rate=200)
            ledger = await settled_ledger(kafka_bootstrap, topics)
            assert {} == ledger.problems()
            assert {"sensor-0000": {bad.seq: "future_event_time"}} == ledger.dead_lettered
            dead = await consume_all(kafka_bootstrap, topics.dlq)
            alerts = await read_alerts(kafka_bootstrap, topics.alerts)
            expected = await expected_alerts(kafka_bootstrap, topics, excluding={bad.event_id})
            assert (1, expected) == (len(dead), sorted(alerts))
        finally:
            stop_all(processors)

    async def test_a_far_future_watermark_in_the_last_commit_heals_on_restart(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """A commit whose metadata carries a 2099 watermark (an earlier processor's) is
        not trusted: the readings after it are aggregated, not counted late."""
        topics = Topics.fresh("healwm")
        await make_input(kafka_bootstrap, topics, partitions=1)
        tp = TopicPartition(topics.input, 0)
        committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=topics.group)
        await committer.start()
        try:
            committer.assign([tp])
            await committer.commit({tp: OffsetAndMetadata(0, f"0:{FAR_FUTURE_MS - 500}")})
        finally:
            await committer.stop()
        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        try:
            await processor.wait_ready()
            async with LiveFeed(kafka_bootstrap, topics.input, sensors=4) as feed:
                await feed.run(3.0, rate=200)
            ledger = await settled_ledger(kafka_bootstrap, topics)
            assert {} == ledger.problems()
            assert {} == ledger.dead_lettered
        finally:
            stop_all([processor])


class TestLateReadings:
    async def test_a_late_reading_lands_in_the_dlq_with_its_lateness(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """By default a reading for a closed window is dead-lettered (late_event) with a
        lateness header, so nothing valid disappears without trace."""
        topics = Topics.fresh("late")
        await make_input(kafka_bootstrap, topics, partitions=1)
        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        try:
            await processor.wait_ready()
            async with LiveFeed(kafka_bootstrap, topics.input, sensors=3) as feed:
                await feed.run(2.0, rate=150)
                late = await feed.send(1, event_time=int(time.time() * 1000) - 10_000)
                await feed.run(2.0, rate=150)
            ledger = await settled_ledger(kafka_bootstrap, topics)
            assert {} == ledger.problems()
            assert {"sensor-0001": {late.seq: "late_event"}} == ledger.dead_lettered
            [dead] = await consume_all(kafka_bootstrap, topics.dlq)
            lateness = dict(dead.headers)["sensorstream.dlq.lateness_ms"]
            assert 9_000 <= int(lateness) <= 12_000
        finally:
            stop_all([processor])

    async def test_drop_late_counts_and_summarises_instead(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """With --drop-late a late reading is not dead-lettered but counted (outcome late)."""
        topics = Topics.fresh("droplate")
        await make_input(kafka_bootstrap, topics, partitions=1)
        processor = start_processor(
            kafka_bootstrap, topics, tmp_path, "--drop-late", SENSORSTREAM_SUMMARY_INTERVAL="1"
        )
        try:
            await processor.wait_ready()
            async with LiveFeed(kafka_bootstrap, topics.input, sensors=3) as feed:
                await feed.run(1.5, rate=150)
                late = await feed.send(2, event_time=int(time.time() * 1000) - 10_000)
                await feed.run(1.5, rate=150)
            # Only the late reading's sensor is short, by exactly that reading.
            ledger = await wait_until(
                lambda: seq_ledger(kafka_bootstrap, topics),
                lambda ledger: (
                    ["sensor-0002"] == list(ledger.problems())
                    and len(ledger.produced["sensor-0002"]) - 1
                    == sum(a.count for a in ledger.aggregates["sensor-0002"])
                ),
                within=30,
                what="every reading but the late one aggregated",
            )
            assert late.seq in ledger.produced["sensor-0002"]
            assert {} == ledger.dead_lettered
            assert 1 == processor.metric('sensorstream_processor_events_total{outcome="late"}')
            await wait_until(
                lambda: asyncio.to_thread(processor.logs),
                lambda logs: '"dropped":1' in logs.replace(" ", ""),
                within=10,
                what="a processor_summary line counting the dropped reading",
            )
        finally:
            stop_all([processor])


async def _create_plain_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    """The four topics with broker defaults only, as `make run` and compose created them
    before the topology was declared (and as a cluster admin may well do)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = (topics.input, topics.aggregates, topics.alerts, topics.dlq)
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()
    for name in names:  # wait until every partition has a leader
        await consume_all(bootstrap, name, timeout=15)


async def _produce_raw(
    bootstrap: str, topic: str, value: bytes, *, key: bytes, max_request_size: int
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=max_request_size)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


class TestOversizedRecords:
    async def test_a_record_just_under_the_broker_limit_crashes_no_replica(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """A ~1 MiB record (too large for the schema) in topics with broker defaults: its
        dead letter (value + headers) would not fit such a DLQ. Both replicas stay up and
        the record is in the DLQ, in full: the processor raised the DLQ's limit."""
        topics = Topics.fresh("onemib")
        await _create_plain_topics(kafka_bootstrap, topics, partitions=2)
        processors = [start_processor(kafka_bootstrap, topics, tmp_path) for _ in range(2)]
        try:
            await asyncio.gather(*(p.wait_ready() for p in processors))
            big = b"x" * 1_048_400  # fits the input topic's default 1 MiB, not with our headers
            async with LiveFeed(kafka_bootstrap, topics.input, sensors=4) as feed:
                await feed.run(1.0, rate=200)
                await _produce_raw(
                    kafka_bootstrap,
                    topics.input,
                    big,
                    key=b"sensor-0000",
                    max_request_size=2 * 1024 * 1024,
                )
                await feed.run(2.0, rate=200)
            ledger = await settled_ledger(kafka_bootstrap, topics)
            assert {} == ledger.problems()
            [dead] = await consume_all(kafka_bootstrap, topics.dlq)
            assert ("too_large", big) == (
                DeadLetterHeaders.from_kafka_headers(dead.headers).reason.value,
                dead.value,
            )
            assert [None, None] == [p.proc.poll() for p in processors]
        finally:
            stop_all(processors)

    async def test_a_dead_letter_larger_than_the_dlq_allows_is_written_truncated(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """A 5 MB record from an input topic that allows 8 MiB cannot fit the 4 MiB DLQ:
        it is written truncated, with its size and hash, and counted."""
        topics = Topics.fresh("truncate")
        await create_topic(
            kafka_bootstrap, topics.input, 1, config={"max.message.bytes": str(8 * 1024 * 1024)}
        )
        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        try:
            await processor.wait_ready()
            huge = bytes(range(256)) * (5_000_000 // 256)
            await _produce_raw(
                kafka_bootstrap,
                topics.input,
                huge,
                key=b"sensor-0000",
                max_request_size=8 * 1024 * 1024,
            )
            deadline = time.monotonic() + 30
            dead = []
            while not dead and time.monotonic() < deadline:
                dead = await consume_all(kafka_bootstrap, topics.dlq)
                await asyncio.sleep(0.5)
            [letter] = dead
            headers = dict(letter.headers)
            assert DeadLetterHeaders.from_kafka_headers(letter.headers).reason.value == "too_large"
            assert str(len(huge)).encode() == headers["sensorstream.dlq.original_size"]
            assert hashlib.sha256(huge).hexdigest().encode() == headers["sensorstream.dlq.sha256"]
            assert letter.value is not None
            assert len(letter.value) < len(huge)
            assert huge.startswith(letter.value)
            assert 1 == processor.metric("sensorstream_processor_dead_letters_truncated_total")
            assert processor.proc.poll() is None
        finally:
            stop_all([processor])


async def _delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + 15
        while topic in await admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} still there"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


class TestTransientOutputErrors:
    async def test_a_dlq_gone_for_longer_than_the_client_timeout_is_waited_for_not_fatal(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """The DLQ topic is gone for ~45 s (an operator re-creating it): writing dead
        letters fails with the client's 40 s metadata timeout, a retriable error. The
        processor retries instead of exiting; once the topic is back every dead letter
        is there once and no reading is lost."""
        topics = Topics.fresh("transient")
        await make_input(kafka_bootstrap, topics, partitions=1)
        processor = start_processor(
            kafka_bootstrap, topics, tmp_path, SENSORSTREAM_OUTPUT_PARTITIONS="1"
        )
        try:
            await processor.wait_ready()
            await _delete_topic(kafka_bootstrap, topics.dlq)
            poison = [b"{not json " + bytes([97 + i]) * 20 for i in range(3)]
            async with LiveFeed(kafka_bootstrap, topics.input, sensors=3) as feed:
                await feed.run(1.0, rate=50)
                for i, payload in enumerate(poison):
                    await _produce_raw(
                        kafka_bootstrap,
                        topics.input,
                        payload,
                        key=f"bad-{i}".encode(),
                        max_request_size=1024 * 1024,
                    )
                # Until the first retry: the client gives up on the missing topic after
                # its 40 s request timeout, which today's main treats as fatal.
                deadline = time.monotonic() + 90
                while processor.metric("sensorstream_processor_retries_total") < 1:
                    assert processor.proc.poll() is None, processor.logs()[-3000:]
                    assert time.monotonic() < deadline, "no retry within 90 s"
                    await feed.run(1.0, rate=50)
                await feed.run(2.0, rate=50)
                assert processor.proc.poll() is None, processor.logs()[-3000:]
                await create_topic(kafka_bootstrap, topics.dlq, 1)
                await feed.run(2.0, rate=50)
            ledger = await settled_ledger(kafka_bootstrap, topics, within=60)
            assert {} == ledger.problems()
            dead = await consume_all(kafka_bootstrap, topics.dlq)
            assert sorted(poison) == sorted(r.value for r in dead)
            assert processor.metric("sensorstream_processor_retries_total") >= 1
            assert 0 == await processor.terminate()
        finally:
            stop_all([processor])
