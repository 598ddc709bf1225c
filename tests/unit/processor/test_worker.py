"""Specification of PartitionWorker: order, checkpoints, idle closes, stopping, failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import TopicPartition
from consumed_records import Record
from prometheus_client import CollectorRegistry

from sensorstream.processor._dead_letters import DeadLetterWriter, OutputRecord
from sensorstream.processor._delivery import Checkpoint, ReplayMark
from sensorstream.processor._fetching import PartitionFeed
from sensorstream.processor._handling import HandlerRunner
from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.processor._pipeline import PartitionPipeline, PipelineConfig
from sensorstream.processor._worker import PartitionWorker, WorkerOptions
from sensorstream.processor.handler import HandlerContext
from sensorstream.schema import (
    DeadLetterHeaders,
    FatalError,
    OwnershipLostError,
    RetriesExhaustedError,
    SensorReading,
    decode_aggregate,
    encode_reading,
)

TP = TopicPartition("sensor-data", 0)
BASE = 1_800_000_000_000
NOW = BASE / 1000 + 60


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
    """Records what the worker sends and checkpoints; ``block`` holds sends until set."""

    def __init__(self) -> None:
        self.sent: list[OutputRecord] = []
        self.checkpoints: list[Checkpoint] = []
        self.block: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def send(self, outputs: list[OutputRecord]) -> None:
        if self.block is not None:
            await self.block.wait()
        if self.error is not None:
            raise self.error
        self.sent.extend(outputs)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        if not self.checkpoints or self.checkpoints[-1] != checkpoint:
            self.checkpoints.append(checkpoint)

    def restored(self, checkpoint: Checkpoint | None) -> None:
        pass


class Handler:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[int] = []
        self.failures = failures

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        self.calls.append(context.offset)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("flaky")


def make_worker(
    *,
    handler: Handler | None = None,
    replay_until: int = -1,
    idle_timeout: float = 30.0,
    handler_retries: int = 3,
) -> tuple[PartitionWorker, FakeSink, PartitionFeed]:
    config = PipelineConfig(window_size_ms=1000, allowed_lateness_ms=0, instance="test")
    pipeline = PartitionPipeline(
        TP.topic, TP.partition, config, replay_until=replay_until, collect_valid=bool(handler)
    )
    metrics = ProcessorMetrics(CollectorRegistry())
    runner = None
    if handler is not None:
        runner = HandlerRunner(
            handler,  # type: ignore[arg-type]
            retries=handler_retries,
            backoff=0.0,
            instance="test",
            dead_letters=DeadLetterWriter(topic="dlq", instance="test", max_bytes=1 << 20),
            duration=metrics.handler_duration,
            retried=metrics.retried,
        )
    sink = FakeSink()
    feed = PartitionFeed(TP, capacity=100, stale_after=2.0)
    worker = PartitionWorker(
        TP,
        pipeline,
        feed=feed,
        sink=sink,
        options=WorkerOptions(idle_timeout=idle_timeout),
        metrics=metrics,
        handler=runner,
    )
    return worker, sink, feed


async def drain(worker: PartitionWorker, offset: int) -> None:
    deadline = time.monotonic() + 5
    while worker.next_offset != offset:
        assert time.monotonic() < deadline, f"worker stuck at {worker.next_offset}"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor's wall clock is a minute after BASE (no reading is in the future)."""
    monkeypatch.setattr("sensorstream.processor._worker.time.time", lambda: NOW)


class TestCheckpoints:
    async def test_checkpoint_stops_at_the_oldest_open_window(self) -> None:
        """offset = min(next, commit_floor); the mark holds next and the watermark."""
        worker, sink, feed = make_worker()
        worker.start(asyncio.create_task)
        feed.push([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE + 1500)])
        await drain(worker, 2)
        await worker.stop(1.0)
        # window [BASE, BASE+1000) closed by the watermark; [BASE+1000, ...) still needs offset 1
        assert [Checkpoint(1, ReplayMark(2, BASE + 1500))] == sink.checkpoints

    async def test_replay_mark_never_moves_back(self) -> None:
        """After a restart the mark stays at least the previous replay mark."""
        worker, sink, feed = make_worker(replay_until=5)
        worker.start(asyncio.create_task)
        feed.push([record(3, 3, event_time=BASE), record(4, 4, event_time=BASE + 10)])
        await drain(worker, 5)
        await worker.stop(1.0)
        assert ([], [Checkpoint(3, ReplayMark(5, BASE + 10))]) == (sink.sent, sink.checkpoints)

    async def test_no_checkpoint_before_processing(self) -> None:
        """A fresh worker has nothing to checkpoint."""
        worker, sink, _ = make_worker()
        worker.start(asyncio.create_task)
        await asyncio.sleep(0.05)
        await worker.stop(1.0)
        assert ([], None) == (sink.checkpoints, worker.checkpoint)

    async def test_a_chunk_in_flight_is_never_in_a_checkpoint(self) -> None:
        """While a chunk's outputs wait for their acks, the checkpoint still describes the
        chunk before, although the pipeline's watermark has already moved on."""
        worker, sink, feed = make_worker()
        worker.start(asyncio.create_task)
        feed.push([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE + 1500)])
        await drain(worker, 2)
        before = worker.checkpoint
        sink.block = asyncio.Event()
        feed.push([record(2, 2, event_time=BASE + 5000)])  # closes [BASE+1000, BASE+2000)
        await asyncio.sleep(0.05)

        in_flight = (worker.checkpoint, sink.checkpoints[-1], worker.pipeline.watermark)
        sink.block.set()
        await drain(worker, 3)
        await worker.stop(1.0)

        assert (before, before, BASE + 5000) == in_flight
        assert Checkpoint(2, ReplayMark(3, BASE + 5000)) == sink.checkpoints[-1]


class TestOrderAndHandler:
    async def test_handler_sees_events_in_offset_order_once(self) -> None:
        """Every valid event is handled once, in offset order, across chunks."""
        handler = Handler()
        worker, _, feed = make_worker(handler=handler)
        worker.start(asyncio.create_task)
        feed.push([record(i, i, event_time=BASE + i) for i in range(5)])
        feed.push([record(i, i, event_time=BASE + i) for i in range(5, 8)])
        await drain(worker, 8)
        await worker.stop(1.0)
        assert list(range(8)) == handler.calls

    async def test_handler_dead_letters_go_out_with_the_chunk(self) -> None:
        """An event whose handler fails for good is dead-lettered in the chunk's outputs."""
        worker, sink, feed = make_worker(handler=Handler(failures=10), handler_retries=1)
        worker.start(asyncio.create_task)
        feed.push([record(0, 0, event_time=BASE)])
        await drain(worker, 1)
        await worker.stop(1.0)
        reasons = [DeadLetterHeaders.from_kafka_headers(o.headers).reason.value for o in sink.sent]
        assert ["handler_failed"] == reasons


class TestIdle:
    def confirm_quiet(self, feed: PartitionFeed, seconds: float) -> None:
        """The broker answers empty fetches every 0.5 s for ``seconds``, caught up at 1."""
        start = time.time()
        for i in range(int(seconds * 2) + 1):
            feed.observe(responded_at=start + i * 0.5, end_offset=1, position=1)

    async def test_windows_close_once_the_broker_confirmed_the_idle_timeout(self) -> None:
        """Broker-confirmed silence for idle_timeout closes every open window."""
        worker, sink, feed = make_worker(idle_timeout=3.0)
        worker.start(asyncio.create_task)
        feed.push([record(0, 0, event_time=BASE)])
        await drain(worker, 1)
        self.confirm_quiet(feed, 3.0)
        await asyncio.sleep(1.5)  # the worker looks for idleness every 0.5 s
        await worker.stop(1.0)
        assert [1] == [decode_aggregate(o.value or b"").count for o in sink.sent]
        assert (0, 1) == (worker.pipeline.open_windows, sink.checkpoints[-1].offset)

    async def test_no_close_without_the_brokers_word(self) -> None:
        """No fetch responses (broker unreachable): windows stay open however long."""
        worker, sink, feed = make_worker(idle_timeout=0.1)
        worker.start(asyncio.create_task)
        feed.push([record(0, 0, event_time=BASE)])
        await drain(worker, 1)
        await asyncio.sleep(1.2)  # two idle ticks, ten idle timeouts
        await worker.stop(1.0)
        assert ([], 1) == (sink.sent, worker.pipeline.open_windows)


class TestStopping:
    async def test_stop_cancels_a_stuck_chunk_after_grace(self) -> None:
        """stop() gives up on a chunk stuck past the grace period; nothing is marked done."""
        worker, sink, feed = make_worker()
        sink.block = asyncio.Event()
        worker.start(asyncio.create_task)
        feed.push([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE + 2000)])
        await asyncio.sleep(0.05)
        clean = await worker.stop(0.05)
        assert (False, None, True, 0) == (clean, worker.next_offset, worker.cancelled, feed.depth)

    async def test_stop_between_chunks_is_clean(self) -> None:
        """An idle worker stops at once and says so."""
        worker, _, _ = make_worker()
        worker.start(asyncio.create_task)
        assert await worker.stop(1.0)


class TestFailures:
    async def test_a_failure_it_cannot_get_past_is_fatal_and_names_the_partition(self) -> None:
        """An exhausted retry budget ends the task with one FatalError at the offset."""
        worker, sink, feed = make_worker()
        sink.error = RetriesExhaustedError("outputs: still failing after 300 s of retries")
        feed.push([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE + 2000)])

        with pytest.raises(FatalError, match="partition 0 failed at offset None: outputs"):
            await worker.run()

    async def test_losing_the_partition_ends_the_task_quietly(self) -> None:
        """OwnershipLostError (fenced, rebalanced) is not a failure of the process."""
        worker, sink, feed = make_worker()
        sink.error = OwnershipLostError("fenced")
        feed.push([record(0, 0, event_time=BASE), record(1, 1, event_time=BASE + 2000)])

        result: Any = await worker.run()

        assert None is result
