"""Specification of the output side: acknowledged sends, retries, oversized dead letters,
and the two producers: the shared idempotent one and a partition's transactional one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerFenced,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from consumed_records import Record
from structlog.testing import capture_logs

from sensorstream.processor import _outputs
from sensorstream.processor._dead_letters import DeadLetterWriter, OutputRecord
from sensorstream.processor._outputs import (
    OutputProducer,
    TransactionalOutput,
    _Sending,
    transactional_id,
)
from sensorstream.runtime import RetryPolicy
from sensorstream.schema import (
    ConfigError,
    DeadLetterReason,
    OwnershipLostError,
    RecordTooLargeError,
    RetriableError,
    RetriesExhaustedError,
    SecurityError,
)

POLICY = RetryPolicy(budget=2.0, wait_initial=0.01, wait_max=0.02, wait_jitter=0)
WRITER = DeadLetterWriter(topic="dlq", instance="i", max_bytes=1 << 20)


class FakeProducer:
    """aiokafka's send(): ``script`` says, per call, what the send or its future does."""

    def __init__(self, script: list[Any] | None = None) -> None:
        self.script = script or []
        self.sent: list[tuple[str, bytes | None]] = []
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        step = self.script.pop(0) if self.script else "ok"
        if step == "raise-timeout":
            raise KafkaTimeoutError()
        if step == "raise-too-large":
            raise MessageSizeTooLargeError()
        self.sent.append((topic, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
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


class FakeClient(FakeProducer):
    """AIOKafkaProducer as the two output classes drive it: every call in ``calls``;
    ``fail[name]`` holds exceptions the next calls of that method raise."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.calls: list[str] = []
        self.fail: dict[str, list[BaseException]] = {}
        self.offsets: list[tuple[dict[TopicPartition, tuple[int, str]], str]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        errors = self.fail.get(name)
        if errors:
            raise errors.pop(0)

    async def start(self) -> None:
        self._call("start")

    async def stop(self) -> None:
        self._call("stop")

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> asyncio.Future[Any]:
        self._call("send")
        return await super().send(topic, value, **kwargs)

    async def begin_transaction(self) -> None:
        self._call("begin")

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, tuple[int, str]], group_id: str
    ) -> None:
        self._call("offsets")
        self.offsets.append((offsets, group_id))

    async def commit_transaction(self) -> None:
        self._call("commit")

    async def abort_transaction(self) -> None:
        self._call("abort")


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[FakeClient]:
    """Every AIOKafkaProducer the output classes create, as a FakeClient."""
    made: list[FakeClient] = []

    def make(**options: Any) -> FakeClient:
        made.append(FakeClient(**options))
        return made[-1]

    monkeypatch.setattr(_outputs, "AIOKafkaProducer", make)
    return made


TP = TopicPartition("sensor-data", 4)


def output_producer() -> OutputProducer:
    return OutputProducer(
        {"bootstrap_servers": "127.0.0.1:1"},
        max_request_size=4 << 20,
        policy=POLICY,
        dead_letters=WRITER,
        on_shrunk=lambda: None,
    )


def transactional() -> TransactionalOutput:
    return TransactionalOutput(
        {"bootstrap_servers": "127.0.0.1:1"},
        group_id="processors",
        tp=TP,
        max_request_size=4 << 20,
        policy=POLICY,
        dead_letters=WRITER,
        on_shrunk=lambda: None,
    )


class TestAcknowledgement:
    async def test_an_output_still_unacknowledged_is_waited_for_not_sent_again(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An attempt that times out waiting for an ack retries by waiting again: the
        client still holds the record and delivers it; sending it twice would duplicate."""
        monkeypatch.setattr(_outputs, "ACK_WAIT", 0.05)
        producer = FakeProducer(["ok", "pending"])
        delivering = asyncio.create_task(
            sending(producer)._deliver([out("agg", b"1"), out("agg", b"2")])
        )
        await asyncio.sleep(0.3)  # several ACK_WAITs, so several attempts
        waited = not delivering.done()
        producer.futures[1].set_result(None)  # the broker acknowledges at last
        await asyncio.wait_for(delivering, timeout=1)

        assert (True, [("agg", b"1"), ("agg", b"2")]) == (waited, producer.sent)

    async def test_the_retry_error_counts_the_unacknowledged_outputs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Retries spent on outputs the broker never acknowledged say how many and why."""
        monkeypatch.setattr(_outputs, "ACK_WAIT", 0.01)
        producer = FakeProducer(["ok"] + [NotLeaderForPartitionError()] * 1000)
        s = sending(producer)
        s._policy = RetryPolicy(budget=0.1, wait_initial=0.01, wait_max=0.02)

        with pytest.raises(RetriesExhaustedError, match=r"1 of 2 outputs not acknowledged"):
            await s._deliver([out("agg", b"1"), out("agg", b"2")])

        assert 1 == producer.sent.count(("agg", b"1"))


class TestOutputProducer:
    def test_the_client_is_idempotent_and_waits_for_all_replicas(
        self, clients: list[FakeClient]
    ) -> None:
        """acks=all with idempotence: a retried batch is never written twice."""
        output_producer()

        [client] = clients
        assert ("127.0.0.1:1", "all", True, 4 << 20) == (
            client.options["bootstrap_servers"],
            client.options["acks"],
            client.options["enable_idempotence"],
            client.options["max_request_size"],
        )
        assert "transactional_id" not in client.options

    async def test_start_retries_a_broker_not_there_yet(self, clients: list[FakeClient]) -> None:
        """A refused connection at start-up is retried within the start-up policy."""
        producer = output_producer()
        clients[0].fail["start"] = [KafkaConnectionError("refused")]

        await producer.start(POLICY)

        assert ["start", "start"] == clients[0].calls

    async def test_start_with_bad_credentials_fails_at_once(
        self, clients: list[FakeClient]
    ) -> None:
        """An authentication failure is a SecurityError naming the step, not retried."""
        producer = output_producer()
        clients[0].fail["start"] = [SaslAuthenticationFailed("bad password")]

        with pytest.raises(SecurityError, match="starting the output producer failed"):
            await producer.start(POLICY)

        assert ["start"] == clients[0].calls

    async def test_send_hands_every_output_over_without_transactions(
        self, clients: list[FakeClient]
    ) -> None:
        """At-least-once: plain sends, in order, then stop stops the client."""
        producer = output_producer()

        await producer.send([out("agg", b"1"), out("alerts", b"2")])
        await producer.stop()

        assert (["send", "send", "stop"], [("agg", b"1"), ("alerts", b"2")]) == (
            clients[0].calls,
            clients[0].sent,
        )


class TestTransactionalOutput:
    def test_the_client_carries_the_partitions_transactional_id(
        self, clients: list[FakeClient]
    ) -> None:
        """The id follows the input partition, so its next owner fences this one."""
        transactional()

        assert ("processors-sensor-data-4", "all", True) == (
            clients[0].options["transactional_id"],
            clients[0].options["acks"],
            clients[0].options["enable_idempotence"],
        )

    async def test_sends_share_one_transaction_until_the_commit(
        self, clients: list[FakeClient]
    ) -> None:
        """begin once, every send inside it, then the offset (with metadata) and commit;
        the next send begins a new transaction."""
        output = transactional()

        await output.send([out("agg", b"1")])
        await output.send([out("agg", b"2")])
        await output.commit(17, "17:1800000000000")
        await output.send([out("agg", b"3")])

        assert ["begin", "send", "send", "offsets", "commit", "begin", "send"] == clients[0].calls
        assert [({TP: (17, "17:1800000000000")}, "processors")] == clients[0].offsets

    async def test_a_commit_without_outputs_commits_the_offset_alone(
        self, clients: list[FakeClient]
    ) -> None:
        """A chunk that produced nothing still moves the offset, in its own transaction."""
        output = transactional()

        await output.commit(5, "5:0")

        assert ["begin", "offsets", "commit"] == clients[0].calls

    async def test_stop_aborts_an_open_transaction(self, clients: list[FakeClient]) -> None:
        """Outputs without their offsets must vanish: stop aborts, then stops the client."""
        output = transactional()
        await output.send([out("agg", b"1")])

        await output.stop()

        assert ["begin", "send", "abort", "stop"] == clients[0].calls

    async def test_stop_after_a_commit_aborts_nothing(self, clients: list[FakeClient]) -> None:
        """No transaction open: nothing to abort."""
        output = transactional()
        await output.send([out("agg", b"1")])
        await output.commit(2, "2:0")

        await output.stop()

        assert ["begin", "send", "offsets", "commit", "stop"] == clients[0].calls

    async def test_a_failed_abort_is_logged_and_the_client_still_stopped(
        self, clients: list[FakeClient]
    ) -> None:
        """Stopping never fails on the abort: the next owner's fencing aborts it anyway."""
        output = transactional()
        await output.send([out("agg", b"1")])
        clients[0].fail["abort"] = [KafkaConnectionError("gone")]

        with capture_logs() as logs:
            await output.stop()

        assert (["begin", "send", "abort", "stop"], ["transaction_abort_failed"]) == (
            clients[0].calls,
            [e["event"] for e in logs],
        )

    async def test_a_fenced_commit_means_the_partition_is_someone_elses(
        self, clients: list[FakeClient]
    ) -> None:
        """ProducerFenced on commit: OwnershipLostError, which the worker ends quietly on."""
        output = transactional()
        await output.send([out("agg", b"1")])
        clients[0].fail["commit"] = [ProducerFenced()]

        with pytest.raises(OwnershipLostError, match="committing the transaction of partition 4"):
            await output.commit(2, "2:0")

    async def test_a_fenced_producer_is_not_used_again(self, clients: list[FakeClient]) -> None:
        """After ProducerFenced the client is in a fatal state: the next commit (say, when
        the partition is revoked) is OwnershipLostError without touching it, and stop()
        does not try to abort (the coordinator aborted the transaction when it fenced)."""
        output = transactional()
        await output.send([out("agg", b"1")])
        clients[0].fail["commit"] = [ProducerFenced()]
        with pytest.raises(OwnershipLostError):
            await output.commit(2, "2:0")
        calls = list(clients[0].calls)

        with pytest.raises(OwnershipLostError, match="a newer owner fenced this producer"):
            await output.commit(3, "3:0")
        await output.stop()

        assert ["stop"] == clients[0].calls[len(calls) :]

    async def test_an_unreachable_broker_at_begin_is_retriable(
        self, clients: list[FakeClient]
    ) -> None:
        """A broker hiccup while beginning is a RetriableError naming the partition; the
        next send begins again."""
        output = transactional()
        clients[0].fail["begin"] = [KafkaConnectionError("gone")]

        with pytest.raises(RetriableError, match="beginning a transaction for partition 4"):
            await output.send([out("agg", b"1")])
        await output.send([out("agg", b"1")])

        assert ["begin", "begin", "send"] == clients[0].calls
