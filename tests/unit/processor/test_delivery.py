"""Specification of the delivery strategies: what is committed, when, and on what failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sensorstream.processor._dead_letters import DeadLetterWriter
from sensorstream.processor._delivery import (
    AtLeastOnce,
    Checkpoint,
    ReplayMark,
    _Transactional,
)
from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.runtime import RetryPolicy
from sensorstream.schema import RetriesExhaustedError

TP0 = TopicPartition("sensor-data", 0)
TP1 = TopicPartition("sensor-data", 1)
POLICY = RetryPolicy(budget=0.5, wait_initial=0.01, wait_max=0.02, wait_jitter=0)


def cp(offset: int) -> Checkpoint:
    return Checkpoint(offset, ReplayMark(offset + 1, 1_800_000_000_000))


class FakeConsumer:
    def __init__(self, errors: list[BaseException] | None = None) -> None:
        self.commits: list[dict[TopicPartition, tuple[int, str]]] = []
        self.errors = errors or []

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.commits.append({tp: (o.offset, o.metadata) for tp, o in offsets.items()})


def at_least_once(
    consumer: FakeConsumer, metrics: ProcessorMetrics | None = None, policy: RetryPolicy = POLICY
) -> AtLeastOnce:
    return AtLeastOnce(
        consumer,  # type: ignore[arg-type]
        producer_options={"bootstrap_servers": "127.0.0.1:1"},
        max_request_size=1 << 20,
        dead_letters=DeadLetterWriter(topic="dlq", instance="i", max_bytes=1 << 20),
        commit_interval=0.05,
        policy=policy,
        startup=policy,
        metrics=metrics or ProcessorMetrics(CollectorRegistry()),
    )


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


class TestAtLeastOnce:
    async def test_commits_each_partitions_newest_checkpoint_once(self) -> None:
        """One commit carries every moved checkpoint; an unchanged one is not re-committed."""
        consumer = FakeConsumer()
        guarantee = at_least_once(consumer)
        sinks = await guarantee.open([TP0, TP1])
        sinks[TP1].restored(cp(9))
        await sinks[TP0].checkpoint(cp(3))
        await sinks[TP0].checkpoint(cp(5))
        await sinks[TP1].checkpoint(cp(9))

        await guarantee.release([(TP0, True), (TP1, True)], grace=1.0)

        assert [{TP0: (5, "6:1800000000000")}] == consumer.commits

    async def test_the_committer_commits_every_interval_until_stopped(self) -> None:
        """run() commits what moved each commit_interval and returns on stop."""
        consumer = FakeConsumer()
        guarantee = at_least_once(consumer)
        sinks = await guarantee.open([TP0])
        stop = asyncio.Event()
        running = asyncio.create_task(guarantee.run(stop))
        await sinks[TP0].checkpoint(cp(1))
        await asyncio.sleep(0.15)
        await sinks[TP0].checkpoint(cp(2))
        await asyncio.sleep(0.15)
        stop.set()
        await asyncio.wait_for(running, timeout=1)

        assert [{TP0: (1, "2:1800000000000")}, {TP0: (2, "3:1800000000000")}] == consumer.commits

    async def test_a_broker_hiccup_is_retried(self) -> None:
        """A retriable commit error is retried within the budget."""
        consumer = FakeConsumer([KafkaConnectionError("gone")])
        guarantee = at_least_once(consumer)
        sinks = await guarantee.open([TP0])
        await sinks[TP0].checkpoint(cp(4))

        await guarantee.release([(TP0, True)], grace=1.0)

        assert [{TP0: (4, "5:1800000000000")}] == consumer.commits

    async def test_a_commit_refused_after_a_rebalance_is_logged_and_counted(self) -> None:
        """The group moved on: no retry, no crash; the next owner resumes from the last commit."""
        metrics = ProcessorMetrics(CollectorRegistry())
        consumer = FakeConsumer([CommitFailedError("rebalanced")])
        guarantee = at_least_once(consumer, metrics)
        sinks = await guarantee.open([TP0])
        await sinks[TP0].checkpoint(cp(4))

        with capture_logs() as logs:
            await guarantee.release([(TP0, True)], grace=1.0)

        assert ([], ["commit_failed"], 1.0) == (
            consumer.commits,
            [e["event"] for e in logs if e["log_level"] == "warning"],
            metrics.commits_failed._value.get(),
        )

    async def test_the_committer_gives_up_after_the_retry_budget(self) -> None:
        """A commit failing for the whole budget is fatal for the committer."""
        consumer = FakeConsumer([KafkaConnectionError("gone")] * 1000)
        guarantee = at_least_once(consumer, policy=RetryPolicy(budget=0.1, wait_initial=0.01))
        sinks = await guarantee.open([TP0])
        await sinks[TP0].checkpoint(cp(1))

        with pytest.raises(RetriesExhaustedError, match="commit"):
            await asyncio.wait_for(guarantee.run(asyncio.Event()), timeout=5)


class FakeTransactionalOutput:
    def __init__(self) -> None:
        self.tp = TP0
        self.commits: list[tuple[int, str]] = []

    async def commit(self, offset: int, metadata: str) -> None:
        self.commits.append((offset, metadata))


class TestExactlyOncePartition:
    async def test_the_worker_commits_its_transaction_every_interval(self) -> None:
        """checkpoint() commits the transaction once commit_interval has passed."""
        output = FakeTransactionalOutput()
        part = _Transactional(
            output,  # type: ignore[arg-type]
            interval=0.1,
            metrics=ProcessorMetrics(CollectorRegistry()),
        )
        await part.checkpoint(cp(1))
        early = list(output.commits)
        await asyncio.sleep(0.12)
        await part.checkpoint(cp(2))
        await part.checkpoint(cp(2))
        await asyncio.sleep(0.12)
        await part.checkpoint(cp(2))  # unchanged: nothing to commit

        assert ([], [(2, "3:1800000000000")]) == (early, output.commits)
