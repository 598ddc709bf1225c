"""Specification of the output side: acknowledged sends, retries, oversized dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from consumed_records import Record

from sensorstream.processor._dead_letters import DeadLetterWriter, OutputRecord
from sensorstream.processor._outputs import _Sending, transactional_id
from sensorstream.runtime import RetryPolicy
from sensorstream.schema import (
    ConfigError,
    DeadLetterReason,
    RecordTooLargeError,
    RetriesExhaustedError,
)

POLICY = RetryPolicy(budget=2.0, wait_initial=0.01, wait_max=0.02, wait_jitter=0)
WRITER = DeadLetterWriter(topic="dlq", instance="i", max_bytes=1 << 20)


class FakeProducer:
    """aiokafka's send(): ``script`` says, per call, what the send or its future does."""

    def __init__(self, script: list[Any] | None = None) -> None:
        self.script = script or []
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        step = self.script.pop(0) if self.script else "ok"
        if step == "raise-timeout":
            raise KafkaTimeoutError()
        if step == "raise-too-large":
            raise MessageSizeTooLargeError()
        self.sent.append((topic, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if step == "ok":
            future.set_result(None)
        elif isinstance(step, BaseException):
            future.set_exception(step)
        # "pending": left unresolved until the test resolves it
        return future


def sending(producer: FakeProducer, shrunk: list[int] | None = None) -> _Sending:
    counter = shrunk if shrunk is not None else []
    return _Sending(
        producer,  # type: ignore[arg-type]
        policy=POLICY,
        dead_letters=WRITER,
        on_shrunk=lambda: counter.append(1),
    )


def out(topic: str, value: bytes) -> OutputRecord:
    return OutputRecord(topic, b"k", value, [])


class TestSend:
    async def test_returns_once_every_output_is_acknowledged(self) -> None:
        """All outputs handed over once, in order."""
        producer = FakeProducer()

        await sending(producer)._deliver([out("agg", b"1"), out("agg", b"2")])

        assert [("agg", b"1"), ("agg", b"2")] == producer.sent

    async def test_only_the_failed_output_is_sent_again(self) -> None:
        """A retriable failure re-sends that output only: no duplicates of the others."""
        producer = FakeProducer(["ok", NotLeaderForPartitionError(), "ok"])

        await sending(producer)._deliver([out("agg", b"1"), out("agg", b"2")])

        assert [("agg", b"1"), ("agg", b"2"), ("agg", b"2")] == producer.sent

    async def test_a_full_client_queue_is_retried(self) -> None:
        """KafkaTimeoutError from send() (broker away for request_timeout_ms) is retried."""
        producer = FakeProducer(["raise-timeout", "ok"])

        await sending(producer)._deliver([out("agg", b"1")])

        assert [("agg", b"1")] == producer.sent

    async def test_a_budget_spent_on_retries_is_fatal(self) -> None:
        """The broker never takes it: RetriesExhaustedError after the budget."""
        producer = FakeProducer(["raise-timeout"] * 1000)
        s = sending(producer)
        s._policy = RetryPolicy(budget=0.1, wait_initial=0.01, wait_max=0.02)

        with pytest.raises(RetriesExhaustedError, match="outputs"):
            await s._deliver([out("agg", b"1")])

    async def test_a_non_retriable_failure_is_fatal_at_once(self) -> None:
        """Not allowed to write: a ConfigError, not retried."""
        producer = FakeProducer([TopicAuthorizationFailedError()])

        with pytest.raises(ConfigError, match="producing to agg"):
            await sending(producer)._deliver([out("agg", b"1")])

    async def test_an_oversized_dead_letter_goes_again_without_its_value(self) -> None:
        """The broker refuses a dead letter as too large: it is sent shrunk and counted."""
        letter = WRITER.letter(
            Record("in", 0, 5, 1, b"k", b"x" * 10_000), DeadLetterReason.TOO_LARGE, "big"
        )
        producer = FakeProducer([MessageSizeTooLargeError(), "ok"])
        shrunk: list[int] = []

        await sending(producer, shrunk)._deliver([letter])

        (_, first), (_, second) = producer.sent
        assert (10_000, b"", [1]) == (len(first or b""), second, shrunk)

    async def test_an_oversized_dead_letter_refused_by_the_client_is_shrunk_too(self) -> None:
        """The client's own size check (raised by send) takes the same path."""
        letter = WRITER.letter(
            Record("in", 0, 5, 1, b"k", b"x" * 10_000), DeadLetterReason.TOO_LARGE, "big"
        )
        producer = FakeProducer(["raise-too-large", "ok"])

        await sending(producer)._deliver([letter])

        assert [("dlq", b"")] == producer.sent

    async def test_an_oversized_aggregate_is_fatal(self) -> None:
        """Only dead letters may be cut; anything else too large is a real error."""
        producer = FakeProducer([MessageSizeTooLargeError()])

        with pytest.raises(RecordTooLargeError):
            await sending(producer)._deliver([out("agg", b"1")])


class TestTransactionalId:
    def test_id_follows_partition_not_instance(self) -> None:
        """Whoever owns a partition uses the same transactional id, so it fences the last owner."""
        tp = TopicPartition("sensor-data", 4)
        assert "sensorstream-processor-sensor-data-4" == transactional_id(
            "sensorstream-processor", tp
        )
