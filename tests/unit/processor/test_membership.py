"""Specification of group membership: where an assigned partition resumes, and hand-over."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sensorstream.processor._delivery import Checkpoint, ReplayMark
from sensorstream.processor._fetching import Fetcher
from sensorstream.processor._membership import GroupMembership
from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.processor._pipeline import PipelineConfig
from sensorstream.processor._windows import NO_WATERMARK
from sensorstream.processor._worker import WorkerOptions
from sensorstream.runtime import RetryPolicy
from sensorstream.schema import FatalError

TP0 = TopicPartition("sensor-data", 0)
TP1 = TopicPartition("sensor-data", 1)
FAR_FUTURE = 4_070_908_800_000


class FakeConsumer:
    def __init__(self) -> None:
        self.sought: dict[TopicPartition, int] = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    def resume(self, tp: TopicPartition) -> None:
        pass


class FakeAdmin:
    def __init__(self, offsets: dict[TopicPartition, OffsetAndMetadata], fail: int = 0) -> None:
        self.offsets = offsets
        self.fail = fail

    async def list_consumer_group_offsets(
        self, group_id: str, *, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        if self.fail:
            self.fail -= 1
            raise KafkaConnectionError("gone")
        return {tp: self.offsets[tp] for tp in partitions if tp in self.offsets}


class Sink:
    def __init__(self) -> None:
        self.restored_with: Checkpoint | str | None = "never"

    async def send(self, outputs: list[Any]) -> None:
        pass

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        pass

    def restored(self, checkpoint: Checkpoint | None) -> None:
        self.restored_with = checkpoint


class FakeGuarantee:
    isolation_level = "read_uncommitted"

    def __init__(self) -> None:
        self.sinks: dict[TopicPartition, Sink] = {}
        self.released: list[tuple[TopicPartition, bool]] = []

    async def open(self, tps: list[TopicPartition]) -> dict[TopicPartition, Any]:
        self.sinks.update({tp: Sink() for tp in tps})
        return {tp: self.sinks[tp] for tp in tps}

    async def release(self, released: list[tuple[TopicPartition, bool]], grace: float) -> None:
        self.released.extend(released)


def membership(
    admin: FakeAdmin, guarantee: FakeGuarantee | None = None
) -> tuple[GroupMembership, FakeConsumer, FakeGuarantee]:
    consumer = FakeConsumer()
    guarantee = guarantee or FakeGuarantee()
    metrics = ProcessorMetrics(CollectorRegistry())
    fetcher = Fetcher(
        consumer,  # type: ignore[arg-type]
        max_batch=10,
        partition_buffer=100,
        fetch_max_wait=0.5,
        read_committed=False,
        policy=RetryPolicy(budget=1.0),
        metrics=metrics,
    )
    group = GroupMembership(
        consumer=consumer,  # type: ignore[arg-type]
        admin=admin,  # type: ignore[arg-type]
        group_id="g",
        guarantee=guarantee,  # type: ignore[arg-type]
        fetcher=fetcher,
        pipeline_config=PipelineConfig(instance="i"),
        worker_options=WorkerOptions(),
        handler_runner=None,
        metrics=metrics,
        spawn=asyncio.create_task,
        revoke_grace=1.0,
        restore_policy=RetryPolicy(budget=0.5, wait_initial=0.01, wait_max=0.02),
    )
    return group, consumer, guarantee


class TestAssignment:
    async def test_a_partition_resumes_at_its_commit_with_its_replay_mark(self) -> None:
        """Seek to the committed offset; the pipeline replays up to the mark's offset."""
        admin = FakeAdmin({TP0: OffsetAndMetadata(40, "52:1800000000000")})
        group, consumer, guarantee = membership(admin)

        await group.on_partitions_assigned({TP0, TP1})
        await group.leave(grace=1.0)

        assert {TP0: 40} == consumer.sought
        assert (
            Checkpoint(40, ReplayMark(52, 1_800_000_000_000)) == guarantee.sinks[TP0].restored_with
        )
        assert None is guarantee.sinks[TP1].restored_with  # never committed: starts afresh
        assert [(TP0, True), (TP1, True)] == sorted(
            guarantee.released, key=lambda r: r[0].partition
        )

    async def test_a_far_future_watermark_from_the_commit_is_dropped(self) -> None:
        """A watermark only a too-far-future clock could set heals on restart (logged)."""
        admin = FakeAdmin({TP0: OffsetAndMetadata(0, f"0:{FAR_FUTURE}")})
        group, _, _ = membership(admin)

        with capture_logs() as logs:
            await group.on_partitions_assigned({TP0})
        watermark = group.workers[TP0].pipeline.watermark
        await group.leave(grace=1.0)

        assert NO_WATERMARK == watermark
        assert [("watermark_reset", FAR_FUTURE)] == [
            (e["event"], e["committed_watermark"]) for e in logs if e["event"] == "watermark_reset"
        ]

    async def test_a_sane_watermark_is_kept(self) -> None:
        """A watermark within the bound is the pipeline's starting point."""
        admin = FakeAdmin({TP0: OffsetAndMetadata(3, "5:1700000000000")})
        group, _, _ = membership(admin)

        await group.on_partitions_assigned({TP0})
        watermark = group.workers[TP0].pipeline.watermark
        await group.leave(grace=1.0)

        assert 1_700_000_000_000 == watermark

    async def test_reading_the_commits_is_retried(self) -> None:
        """A broker hiccup while reading the committed offsets is retried."""
        admin = FakeAdmin({TP0: OffsetAndMetadata(7, "7")}, fail=1)
        group, consumer, _ = membership(admin)

        await group.on_partitions_assigned({TP0})
        await group.leave(grace=1.0)

        assert {TP0: 7} == consumer.sought

    async def test_foreign_metadata_is_ignored(self) -> None:
        """Metadata someone else committed does not stop the assignment."""
        admin = FakeAdmin({TP0: OffsetAndMetadata(7, "not ours")})
        group, consumer, guarantee = membership(admin)

        with capture_logs() as logs:
            await group.on_partitions_assigned({TP0})
        await group.leave(grace=1.0)

        assert ({TP0: 7}, ["commit_metadata_ignored"]) == (
            consumer.sought,
            [e["event"] for e in logs if e["log_level"] == "warning"],
        )
        assert Checkpoint(7, ReplayMark()) == guarantee.sinks[TP0].restored_with


class TestFailure:
    async def test_a_failed_assignment_is_raised_by_check(self) -> None:
        """aiokafka only logs listener exceptions: check() makes the fetch loop raise it."""

        class Broken(FakeGuarantee):
            async def open(self, tps: list[TopicPartition]) -> dict[TopicPartition, Any]:
                raise RuntimeError("no producer")

        group, _, _ = membership(FakeAdmin({}), Broken())
        await group.on_partitions_assigned({TP0})

        with pytest.raises(FatalError, match="taking over partitions failed: no producer"):
            group.check()


class TestRevocation:
    async def test_a_failed_release_still_forgets_the_workers(self) -> None:
        """The guarantee fails to commit a revoked partition (a fenced zombie): its worker
        is forgotten anyway, so when the partition comes back it gets a new worker."""

        class Failing(FakeGuarantee):
            async def release(
                self, released: list[tuple[TopicPartition, bool]], grace: float
            ) -> None:
                raise RuntimeError("Not in the middle of a transaction")

        group, _, _ = membership(FakeAdmin({}), Failing())
        await group.on_partitions_assigned({TP0})
        first = group.workers[TP0]

        with capture_logs() as logs:
            await group.on_partitions_revoked({TP0})
        forgotten = TP0 not in group.workers
        await group.on_partitions_assigned({TP0})

        assert (True, ["revocation_failed"]) == (forgotten, [e["event"] for e in logs])
        assert first is not group.workers[TP0]
        assert 1 == group._metrics.assigned_partitions._value.get()

    async def test_revoked_partitions_are_released_and_forgotten(self) -> None:
        """Their workers stop, their feeds close, the guarantee commits what they finished."""
        group, _, guarantee = membership(FakeAdmin({}))
        await group.on_partitions_assigned({TP0, TP1})

        await group.on_partitions_revoked({TP1})
        remaining = sorted(tp.partition for tp in group.workers)
        await group.leave(grace=1.0)

        assert ([0], (TP1, True)) == (remaining, guarantee.released[0])
