"""Specification of PartitionWorker: order, commit rule, handler retries, backpressure."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import TopicPartition
from consumed_records import Record
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.processor._pipeline import OutputRecord, PartitionPipeline, PipelineConfig
from sensorstream.processor._worker import PartitionWorker, ReplayMark, WorkerOptions
from sensorstream.processor.handler import HandlerContext
from sensorstream.schema import (
    DeadLetterHeaders,
    PoisonEventError,
    Rejection,
    RejectReason,
    SensorReading,
    decode_aggregate,
    encode_reading,
)

TP = TopicPartition("sensor-data", 0)


def record(offset: int, seq: int, *, event_time: int, sensor: str = "sensor-0001") -> Record:
    reading = SensorReading(
        schema_version=1,
        event_id=str(uuid.uuid4()),
        sensor_id=sensor,
        seq=seq,
        event_time=event_time,
        temperature=20.0,
        humidity=50.0,
    )
    return Record(
        TP.topic, TP.partition, offset, event_time, sensor.encode(), encode_reading(reading)
    )


class FakeSink:
    def __init__(self) -> None:
        self.sent: list[OutputRecord] = []

    async def send(self, outputs: list[OutputRecord]) -> None:
        self.sent.extend(outputs)


class CountingHandler:
    def __init__(self, failures: int = 0, poison: bool = False) -> None:
        self.calls: list[int] = []
        self.failures = failures
        self.poison = poison

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        self.calls.append(context.offset)
        if self.poison:
            raise PoisonEventError(Rejection(RejectReason.OUT_OF_RANGE, "never"))
        if self.failures:
            self.failures -= 1
            raise RuntimeError("flaky")


def make_worker(
    handler: CountingHandler | None = None, *, replay_until: int = -1, **options: object
) -> tuple[PartitionWorker, FakeSink]:
    config = PipelineConfig(window_size_ms=1000, allowed_lateness_ms=0, instance="test")
    sink = FakeSink()
    worker = PartitionWorker(
        TP,
        PartitionPipeline(TP.topic, TP.partition, config, replay_until=replay_until),
        sink=sink,
        options=WorkerOptions(handler_backoff=0.0, **options),  # type: ignore[arg-type]
        metrics=ProcessorMetrics(CollectorRegistry()),
        handler=handler,  # type: ignore[arg-type]
    )
    return worker, sink


async def drain(worker: PartitionWorker, offset: int) -> None:
    deadline = time.monotonic() + 5
    while worker.next_offset != offset:
        assert time.monotonic() < deadline, f"worker stuck at {worker.next_offset}"
        await asyncio.sleep(0.01)


BASE = 1_800_000_000_000


class TestCommitRule:
    async def test_commit_stops_at_the_oldest_open_window(self) -> None:
        """Committable = min(next, commit_floor); the metadata holds next and the watermark."""
        worker, _ = make_worker()
        worker.start()
        worker.feed([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE + 1500)])
        await drain(worker, 2)
        await worker.stop(1.0)
        # window [BASE, BASE+1000) closed by the watermark; [BASE+1000, ...) still needs offset 1
        assert (1, f"2:{BASE + 1500}") == worker.committable()

    async def test_replay_mark_never_moves_back(self) -> None:
        """After a restart the metadata stays at least the previous replay mark."""
        worker, sink = make_worker(replay_until=5)
        worker.start()
        worker.feed([record(3, 3, event_time=BASE), record(4, 4, event_time=BASE + 10)])
        await drain(worker, 5)
        await worker.stop(1.0)
        assert ([], (3, f"5:{BASE + 10}")) == (sink.sent, worker.committable())

    async def test_nothing_to_commit_before_processing(self) -> None:
        """A fresh worker has nothing to commit."""
        worker, _ = make_worker()
        assert None is worker.needs_commit()


class TestReplayMark:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("7:1800000000000", ReplayMark(7, 1_800_000_000_000)), ("7", ReplayMark(7))],
    )
    def test_decodes_ours_and_the_older_bare_offset(self, text: str, expected: ReplayMark) -> None:
        """Metadata "until:watermark" and a bare "until" both parse."""
        assert expected == ReplayMark.decode(text)

    def test_round_trips(self) -> None:
        """decode(encode(mark)) is the mark."""
        mark = ReplayMark(42, -5)
        assert mark == ReplayMark.decode(mark.encode())

    @pytest.mark.parametrize("text", ["", "x", "1:y", "1:2:3"])
    def test_refuses_foreign_metadata(self, text: str) -> None:
        """Metadata someone else wrote raises ValueError (the consumer then ignores it)."""
        with pytest.raises(ValueError, match="invalid literal"):
            ReplayMark.decode(text)


class TestHandler:
    async def test_handler_sees_events_in_offset_order_once(self) -> None:
        """Every valid event is handled once, in offset order."""
        handler = CountingHandler()
        worker, _ = make_worker(handler)
        worker.start()
        worker.feed([record(i, i, event_time=BASE + i) for i in range(5)])
        worker.feed([record(i, i, event_time=BASE + i) for i in range(5, 8)])
        await drain(worker, 8)
        await worker.stop(1.0)
        assert list(range(8)) == handler.calls

    async def test_exhausted_retries_dead_letter_the_event(self) -> None:
        """A handler failing past its retries dead-letters the event; the partition moves on."""
        handler = CountingHandler(failures=10)
        worker, sink = make_worker(handler, handler_retries=2)
        worker.start()
        worker.feed([record(0, 0, event_time=BASE)])
        await drain(worker, 1)
        await worker.stop(1.0)
        reasons = [DeadLetterHeaders.from_kafka_headers(o.headers).reason.value for o in sink.sent]
        assert ([0, 0, 0], ["handler_failed"]) == (handler.calls, reasons)

    async def test_poison_error_dead_letters_without_retry(self) -> None:
        """PoisonEventError from the handler goes to the DLQ at once."""
        handler = CountingHandler(poison=True)
        worker, sink = make_worker(handler, handler_retries=5)
        worker.start()
        worker.feed([record(0, 0, event_time=BASE)])
        await drain(worker, 1)
        await worker.stop(1.0)
        assert ([0], 1) == (handler.calls, len(sink.sent))


class TestFeed:
    async def test_an_offset_fed_twice_is_counted_once(self) -> None:
        """A fetch overlapping an earlier one reaches the window once per offset."""
        worker, sink = make_worker()
        worker.start()
        worker.feed([record(i, i, event_time=BASE + i) for i in range(3)])
        worker.feed([record(i, i, event_time=BASE + i) for i in range(1, 5)])
        worker.feed([record(i, i, event_time=BASE + i) for i in range(2, 4)])
        worker.feed([record(5, 5, event_time=BASE + 2_000)])
        await drain(worker, 6)
        await worker.stop(1.0)
        aggregate = decode_aggregate(sink.sent[0].value or b"")
        assert (5, 0, 4) == (aggregate.count, aggregate.first_seq, aggregate.last_seq)

    async def test_logs_dropped_refed_records(self) -> None:
        """Dropping re-fed records is logged with partition and offsets."""
        worker, _ = make_worker()
        worker.feed([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE)])
        with capture_logs() as logs:
            worker.feed([record(1, 1, event_time=BASE), record(2, 2, event_time=BASE)])
        assert [("records_refed_dropped", 0, 1, 2, 1)] == [
            (e["event"], e["partition"], e["offset"], e["fed_until"], e["dropped"]) for e in logs
        ]
        assert 3 == worker.depth


class TestBackpressure:
    async def test_drained_worker_resumes_its_paused_partition(self) -> None:
        """A paused worker calls on_drained once its buffer is below half."""
        resumed: list[TopicPartition] = []
        worker, _ = make_worker(partition_buffer=4)
        worker._on_drained = resumed.append
        worker.feed([record(i, i, event_time=BASE + i) for i in range(4)])
        assert worker.buffer_full
        worker.paused = True
        worker.start()
        await drain(worker, 4)
        await worker.stop(1.0)
        assert ([TP], False) == (resumed, worker.paused)

    @pytest.mark.parametrize("grace", [0.05])
    async def test_stop_cancels_a_stuck_handler_after_grace(self, grace: float) -> None:
        """stop() gives up on a handler stuck past the grace period; nothing is marked done."""

        class Stuck(CountingHandler):
            async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
                await asyncio.sleep(60)

        worker, _ = make_worker(Stuck())
        worker.start()
        worker.feed([record(0, 0, event_time=BASE)])
        await asyncio.sleep(0.05)
        await worker.stop(grace)
        assert (None, False, True) == (worker.next_offset, worker.running, worker.cancelled)
