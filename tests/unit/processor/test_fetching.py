"""Specification of the fetch side: feeds, flow control, and idle that means idle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from consumed_records import Record
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sensorstream.processor._fetching import Fetcher, PartitionFeed
from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.runtime import RetryPolicy
from sensorstream.schema import ConfigError, FatalError

TP = TopicPartition("sensor-data", 2)


def records(*offsets: int) -> list[Record]:
    return [Record(TP.topic, TP.partition, o, 0, b"k", b"v") for o in offsets]


def feed(capacity: int = 100, on_drained: Any = None) -> PartitionFeed:
    return PartitionFeed(TP, capacity=capacity, stale_after=2.0, on_drained=on_drained)


class TestFeedRecords:
    def test_take_returns_records_in_offset_order_up_to_the_limit(self) -> None:
        """Chunks are split at the limit and the rest stays queued."""
        f = feed()
        f.push(records(0, 1, 2))
        f.push(records(3, 4))

        assert ([0, 1, 2, 3], [4]) == (
            [r.offset for r in f.take(4)],
            [r.offset for r in f.take(4)],
        )

    def test_an_offset_pushed_twice_is_queued_once_and_logged(self) -> None:
        """A fetch overlapping an earlier one reaches the worker once per offset."""
        f = feed()
        f.push(records(0, 1))
        with capture_logs() as logs:
            f.push(records(1, 2))
            f.push(records(0, 1))

        assert [0, 1, 2] == [r.offset for r in f.take(10)]
        assert [("records_refed_dropped", 1, 2, 1), ("records_refed_dropped", 0, 3, 2)] == [
            (e["event"], e["offset"], e["fed_until"], e["dropped"]) for e in logs
        ]

    def test_a_paused_feed_is_resumed_once_drained_below_half(self) -> None:
        """done() calls on_drained for a paused feed at depth < capacity / 2."""
        resumed: list[TopicPartition] = []
        f = feed(capacity=4, on_drained=resumed.append)
        f.push(records(0, 1, 2, 3))
        f.paused = True

        f.done(len(f.take(2)), 2, None)
        after_two = list(resumed)
        f.done(len(f.take(1)), 3, None)

        assert ([], [TP], False) == (after_two, resumed, f.paused)

    def test_done_tracks_progress_for_the_lag(self) -> None:
        """processed_until and the newest event time follow the worker."""
        f = feed()
        f.push(records(7, 8))
        f.done(len(f.take(2)), 9, 1_800_000_000_000)
        f.done(0, 9, 1_700_000_000_000)

        assert (9, 1_800_000_000_000, 0) == (f.processed_until, f.last_event_time, f.depth)


class TestQuiet:
    def test_confirmed_silence_accumulates(self) -> None:
        """Fetch responses that find the partition caught up extend the quiet stretch."""
        f = feed()
        for t in (100.0, 100.5, 101.0, 101.5):
            f.observe(responded_at=t, end_offset=5, position=5)

        assert 1.5 == f.quiet_for()

    def test_records_end_the_quiet(self) -> None:
        """Any record pushed resets the stretch."""
        f = feed()
        f.observe(responded_at=100.0, end_offset=5, position=5)
        f.observe(responded_at=110.0, end_offset=5, position=5)
        f.push(records(5))

        assert 0.0 == f.quiet_for()

    def test_a_partition_behind_its_end_is_not_quiet(self) -> None:
        """Caught up means position at the end offset the broker reported."""
        f = feed()
        for t in (100.0, 100.5, 101.0):
            f.observe(responded_at=t, end_offset=9, position=5)

        assert 0.0 == f.quiet_for()

    def test_no_responses_freeze_the_quiet_time(self) -> None:
        """While the broker is unreachable no response arrives: the quiet time stays put,
        whatever the wall clock does."""
        f = feed()
        f.observe(responded_at=100.0, end_offset=5, position=5)
        f.observe(responded_at=101.0, end_offset=5, position=5)
        frozen = f.quiet_for()
        f.observe(responded_at=101.0, end_offset=5, position=5)  # the same, stale response

        assert (1.0, 1.0) == (frozen, f.quiet_for())

    def test_a_gap_between_responses_starts_the_stretch_again(self) -> None:
        """After an outage (a gap longer than stale_after) the silence counts from zero."""
        f = feed()
        f.observe(responded_at=100.0, end_offset=5, position=5)
        f.observe(responded_at=101.0, end_offset=5, position=5)
        f.observe(responded_at=140.0, end_offset=5, position=5)  # broker back after 39 s
        f.observe(responded_at=140.5, end_offset=5, position=5)

        assert 0.5 == f.quiet_for()

    def test_an_unanswered_partition_is_noticed_after_stale_after(self) -> None:
        """No answer for stale_after seconds (or none since it opened): unanswered."""
        f = feed()
        f.observe(responded_at=100.0, end_offset=5, position=5)

        assert (False, True) == (f.unanswered(101.5), f.unanswered(102.5))

    def test_a_paused_partition_is_never_unanswered(self) -> None:
        """A paused partition is not fetched on purpose; its silence means nothing."""
        f = feed()
        f.paused = True

        assert not f.unanswered(1e12)

    def test_unconfirmed_drops_the_stretch_so_far(self) -> None:
        """When another partition goes unanswered, the quiet so far no longer counts."""
        f = feed()
        for t in (100.0, 100.5, 101.0):
            f.observe(responded_at=t, end_offset=5, position=5)
        f.unconfirmed()
        f.observe(responded_at=101.5, end_offset=5, position=5)
        f.observe(responded_at=102.0, end_offset=5, position=5)

        assert 0.5 == f.quiet_for()

    def test_queued_records_mean_not_quiet(self) -> None:
        """Records waiting for the worker: the partition is not idle, the worker is behind."""
        f = feed()
        f.push(records(5))
        f.observe(responded_at=100.0, end_offset=6, position=6)
        f.observe(responded_at=130.0, end_offset=6, position=6)

        assert 0.0 == f.quiet_for()


class FakeConsumer:
    """What the fetch loop uses of AIOKafkaConsumer."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.assigned = {TP}
        self.sought: list[tuple[TopicPartition, int]] = []
        self.paused: list[TopicPartition] = []
        self.resumed: list[TopicPartition] = []
        self.polled_ms: int | None = 100_000
        self.hw = 0
        self.lso: int | None = None
        """last_stable_offset(); None: the high watermark."""
        self.at: int | None = None
        """position(); None: the high watermark."""
        self.positions_asked = 0
        self.calls = 0

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.calls += 1
        if not self.batches:
            await asyncio.sleep(0.01)
            return {}
        batch = self.batches.pop(0)
        if isinstance(batch, BaseException):
            raise batch
        return batch  # type: ignore[no-any-return]

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append((tp, offset))

    def pause(self, tp: TopicPartition) -> None:
        self.paused.append(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.resumed.append(tp)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.polled_ms

    def highwater(self, tp: TopicPartition) -> int:
        return self.hw

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.hw if self.lso is None else self.lso

    async def position(self, tp: TopicPartition) -> int:
        self.positions_asked += 1
        return self.hw if self.at is None else self.at


def fetcher(
    consumer: FakeConsumer,
    *,
    capacity: int = 100,
    budget: float = 1.0,
    read_committed: bool = False,
    fetch_max_wait: float = 0.5,
    metrics: ProcessorMetrics | None = None,
) -> Fetcher:
    return Fetcher(
        consumer,  # type: ignore[arg-type]
        max_batch=10,
        partition_buffer=capacity,
        fetch_max_wait=fetch_max_wait,
        read_committed=read_committed,
        policy=RetryPolicy(budget=budget, wait_initial=0.01, wait_max=0.02, wait_jitter=0),
        metrics=metrics or ProcessorMetrics(CollectorRegistry()),
    )


async def run_until_drained(f: Fetcher, consumer: FakeConsumer) -> None:
    stop = asyncio.Event()

    def check() -> None:
        if not consumer.batches:
            stop.set()

    await asyncio.wait_for(f.run(stop, check), timeout=5)


class TestFetchLoop:
    async def test_records_reach_their_partitions_feed(self) -> None:
        """getmany's records are pushed to the feed of their partition."""
        consumer = FakeConsumer([{TP: records(0, 1)}, {TP: records(2)}])
        f = fetcher(consumer)
        opened = f.open_feed(TP)

        await run_until_drained(f, consumer)

        assert [0, 1, 2] == [r.offset for r in opened.take(10)]

    async def test_records_for_a_partition_without_a_feed_yet_are_given_back(self) -> None:
        """Fetched before on_assigned opened the feed: seek back, so nothing is skipped."""
        consumer = FakeConsumer([{TP: records(4, 5)}])
        f = fetcher(consumer)

        await run_until_drained(f, consumer)

        assert [(TP, 4)] == consumer.sought

    async def test_a_full_feed_pauses_its_partition(self) -> None:
        """Flow control: fetching for a partition stops once its feed is full."""
        consumer = FakeConsumer([{TP: records(0, 1, 2)}])
        f = fetcher(consumer, capacity=3)
        opened = f.open_feed(TP)

        await run_until_drained(f, consumer)
        opened.done(len(opened.take(3)), 3, None)

        assert ([TP], True, [TP]) == (consumer.paused, not opened.paused, consumer.resumed)

    async def test_broker_answers_reach_the_feed(self) -> None:
        """After each fetch the feed learns the end offset and the response time."""
        consumer = FakeConsumer([{TP: records(0)}])
        consumer.hw = 1
        f = fetcher(consumer)
        opened = f.open_feed(TP)

        await run_until_drained(f, consumer)

        assert 1 == opened.end_offset

    async def test_a_retriable_fetch_error_is_retried(self) -> None:
        """A broker hiccup while fetching is retried, not fatal."""
        consumer = FakeConsumer([KafkaConnectionError("gone"), {TP: records(0)}])
        f = fetcher(consumer)
        opened = f.open_feed(TP)

        await run_until_drained(f, consumer)

        assert [0] == [r.offset for r in opened.take(10)]

    async def test_a_fatal_fetch_error_stops_the_loop(self) -> None:
        """Not being allowed to read the topic is a configuration error."""
        consumer = FakeConsumer([TopicAuthorizationFailedError("no")])
        f = fetcher(consumer)

        with pytest.raises(ConfigError, match="fetching failed"):
            await run_until_drained(f, consumer)

    async def test_a_failed_group_member_stops_the_loop(self) -> None:
        """check() raising (a rebalance callback failed) ends the fetch loop."""
        consumer = FakeConsumer([{}])
        f = fetcher(consumer)

        def check() -> None:
            raise FatalError("taking over partitions failed")

        with pytest.raises(FatalError, match="taking over"):
            await asyncio.wait_for(f.run(asyncio.Event(), check), timeout=5)


class TestBrokerAway:
    async def test_one_unanswered_partition_stops_every_quiet_clock(self) -> None:
        """A dead broker stalls the high watermark of the partitions it followed too: while
        any partition goes unanswered, no partition's silence counts."""
        other = TopicPartition("sensor-data", 3)
        consumer = FakeConsumer([{}, {}, {}])
        consumer.assigned = {TP, other}
        f = fetcher(consumer)
        answered = f.open_feed(TP)
        silent = f.open_feed(other)
        for t in (100.0, 100.5, 101.0, 101.5):
            answered.observe(responded_at=t, end_offset=0, position=0)
        before = answered.quiet_for()
        silent._opened_at = 0.0  # opened long ago, never answered

        await f._observe()

        assert (1.5, 0.0) == (before, answered.quiet_for())


class TestLag:
    def test_lag_is_the_end_offset_minus_what_is_done(self) -> None:
        """Lag in events per partition, summed; none before anything was processed."""
        consumer = FakeConsumer([])
        f = fetcher(consumer)
        opened = f.open_feed(TP)
        before = f.update_lag()
        opened.observe(responded_at=100.0, end_offset=10, position=10)
        opened.push(records(0, 1, 2, 3))
        opened.done(len(opened.take(4)), 4, None)

        assert ((0, 0.0), 6) == (before, f.update_lag()[0])


class TestFeedWaiting:
    async def test_wait_returns_at_once_when_records_are_queued(self) -> None:
        """A worker with records waiting does not sleep."""
        f = feed()
        f.push(records(0))

        await asyncio.wait_for(f.wait(timeout=30), timeout=1)

        assert [0] == [r.offset for r in f.take(10)]

    async def test_a_push_wakes_a_waiting_worker(self) -> None:
        """Records arriving end the wait, long before its timeout."""
        f = feed()
        waiting = asyncio.create_task(f.wait(timeout=30))
        await asyncio.sleep(0.01)
        f.push(records(0))

        await asyncio.wait_for(waiting, timeout=1)

    async def test_wake_ends_a_wait_without_records(self) -> None:
        """wake() (the worker is being stopped) ends the wait at once."""
        f = feed()
        waiting = asyncio.create_task(f.wait(timeout=30))
        await asyncio.sleep(0.01)
        f.wake()

        await asyncio.wait_for(waiting, timeout=1)

    async def test_an_empty_push_queues_nothing(self) -> None:
        """An empty fetch neither queues records nor ends the quiet."""
        f = feed()
        f.observe(responded_at=100.0, end_offset=5, position=5)
        f.observe(responded_at=101.0, end_offset=5, position=5)
        f.push([])

        assert (0, None, 1.0) == (f.depth, f.fed_until, f.quiet_for())


class TestPauseAndResume:
    async def test_the_paused_gauge_follows_pause_and_resume(self) -> None:
        """paused_partitions is 1 while the full feed is paused and 0 once it drained."""
        metrics = ProcessorMetrics(CollectorRegistry())
        consumer = FakeConsumer([{TP: records(0, 1, 2)}])
        f = fetcher(consumer, capacity=3, metrics=metrics)
        opened = f.open_feed(TP)

        await run_until_drained(f, consumer)
        while_paused = (f.paused, metrics.paused_partitions._value.get())
        opened.done(len(opened.take(3)), 3, None)

        assert ((1, 1.0), (0, 0.0)) == (
            while_paused,
            (f.paused, metrics.paused_partitions._value.get()),
        )

    async def test_a_feed_is_paused_once_however_much_more_arrives(self) -> None:
        """Records fetched before the pause took effect are queued; pause is not repeated."""
        consumer = FakeConsumer([{TP: records(0, 1, 2)}, {TP: records(3, 4)}])
        f = fetcher(consumer, capacity=3)
        opened = f.open_feed(TP)

        await run_until_drained(f, consumer)

        assert ([TP], 5) == (consumer.paused, opened.depth)

    async def test_a_partition_revoked_while_paused_is_not_resumed(self) -> None:
        """Resuming a partition the consumer no longer has would fail: it is skipped."""
        consumer = FakeConsumer([{TP: records(0, 1, 2)}])
        f = fetcher(consumer, capacity=3)
        opened = f.open_feed(TP)
        await run_until_drained(f, consumer)
        consumer.assigned = set()

        opened.done(len(opened.take(3)), 3, None)

        assert [] == consumer.resumed

    async def test_closing_a_feed_drops_its_records_and_its_pause(self) -> None:
        """A revoked partition's buffered records are dropped (the next owner fetches them)
        and it no longer counts as paused."""
        metrics = ProcessorMetrics(CollectorRegistry())
        consumer = FakeConsumer([{TP: records(0, 1, 2)}])
        f = fetcher(consumer, capacity=3, metrics=metrics)
        opened = f.open_feed(TP)
        await run_until_drained(f, consumer)

        f.close_feed(TP)

        assert ({}, 0, [], 0.0) == (
            f.feeds,
            opened.depth,
            opened.take(10),
            metrics.paused_partitions._value.get(),
        )

    async def test_records_of_a_partition_no_longer_assigned_are_dropped(self) -> None:
        """No feed and not ours (revoked meanwhile): neither queued nor sought."""
        consumer = FakeConsumer([{TP: records(4, 5)}])
        consumer.assigned = set()
        f = fetcher(consumer)

        await run_until_drained(f, consumer)

        assert ([], {}) == (consumer.sought, f.feeds)


class TestObserve:
    async def test_read_committed_measures_against_the_last_stable_offset(self) -> None:
        """With exactly-once the end is the LSO: records of an open transaction above it
        are not yet readable, so a partition at the LSO is caught up."""
        consumer = FakeConsumer([])
        consumer.hw, consumer.lso = 12, 8
        f = fetcher(consumer, read_committed=True)
        opened = f.open_feed(TP)
        opened.push(records(*range(8)))
        opened.done(len(opened.take(10)), 8, None)

        await f._observe()

        assert (8, 0) == (opened.end_offset, f.update_lag()[0])

    async def test_read_uncommitted_measures_against_the_high_watermark(self) -> None:
        """At-least-once: the end is the high watermark."""
        consumer = FakeConsumer([])
        consumer.hw, consumer.lso = 12, 8
        f = fetcher(consumer)
        opened = f.open_feed(TP)

        await f._observe()

        assert 12 == opened.end_offset

    async def test_a_partition_past_control_records_is_caught_up(self) -> None:
        """A commit marker takes an offset no record has: fed_until stays below the end,
        so the fetcher asks the consumer's position, and the partition can go quiet."""
        consumer = FakeConsumer([])
        consumer.hw = consumer.at = 5  # records 0..3, the marker at 4
        f = fetcher(consumer, read_committed=True)
        opened = f.open_feed(TP)
        opened.push(records(0, 1, 2, 3))
        opened.done(len(opened.take(10)), 4, None)
        answered = int(time.time() * 1000) - 500  # two answers, 0.5 s apart, up to now
        for polled_ms in (answered, answered + 500):
            consumer.polled_ms = polled_ms
            await f._observe()

        assert (2, 0.5) == (consumer.positions_asked, opened.quiet_for())

    async def test_the_same_fetch_response_is_observed_once(self) -> None:
        """No new response since the last look: nothing is asked, the quiet time stays."""
        consumer = FakeConsumer([])
        consumer.hw, consumer.at = 5, 5
        consumer.polled_ms = int(time.time() * 1000)
        f = fetcher(consumer)
        f.open_feed(TP)
        for _ in range(3):
            await f._observe()  # polled_ms never changes

        assert 1 == consumer.positions_asked

    async def test_a_partition_never_fetched_is_not_observed(self) -> None:
        """No fetch response yet: the feed learns nothing (no end offset, no quiet)."""
        consumer = FakeConsumer([])
        consumer.polled_ms = None
        f = fetcher(consumer)
        opened = f.open_feed(TP)

        await f._observe()

        assert (None, 0) == (opened.end_offset, consumer.positions_asked)

    async def test_a_revoked_partitions_feed_is_not_observed(self) -> None:
        """A feed whose partition left the assignment learns nothing more."""
        consumer = FakeConsumer([])
        consumer.hw = 7
        consumer.assigned = set()
        f = fetcher(consumer)
        opened = f.open_feed(TP)

        await f._observe()

        assert opened.end_offset is None

    @pytest.mark.parametrize(
        ("fetch_max_wait", "silent", "stale"), [(0.5, 1.5, True), (2.0, 3.5, False)]
    )
    def test_a_partition_is_unanswered_after_twice_the_fetch_wait(
        self, fetch_max_wait: float, silent: float, stale: bool
    ) -> None:
        """A healthy partition is answered every fetch_max_wait; silence for twice that
        (at least 1 s) means the broker is away."""
        f = fetcher(FakeConsumer([]), fetch_max_wait=fetch_max_wait)
        opened = f.open_feed(TP)
        opened.observe(responded_at=100.0, end_offset=0, position=0)

        assert stale == opened.unanswered(100.0 + silent)


class TestLagGauges:
    def test_lag_in_seconds_is_the_age_of_the_last_processed_event(self) -> None:
        """While a partition has lag, its lag in seconds is how old its newest processed
        event is; the gauges carry both per partition."""
        metrics = ProcessorMetrics(CollectorRegistry())
        f = fetcher(FakeConsumer([]), metrics=metrics)
        opened = f.open_feed(TP)
        opened.observe(responded_at=100.0, end_offset=10, position=10)
        opened.push(records(0, 1, 2, 3))
        an_hour_ago = int((time.time() - 3600) * 1000)
        opened.done(len(opened.take(4)), 4, an_hour_ago)

        events, seconds = f.update_lag()

        partition = str(TP.partition)
        assert (6, 6.0, True, True) == (
            events,
            metrics.lag_events.labels(partition=partition)._value.get(),
            3595 < seconds < 3700,
            seconds == metrics.lag_seconds.labels(partition=partition)._value.get(),
        )

    def test_a_caught_up_partition_has_no_lag_in_seconds(self) -> None:
        """No lag: 0 s, however old the last event (a quiet sensor is not a slow worker)."""
        f = fetcher(FakeConsumer([]))
        opened = f.open_feed(TP)
        opened.observe(responded_at=100.0, end_offset=4, position=4)
        opened.push(records(0, 1, 2, 3))
        opened.done(len(opened.take(4)), 4, 1_000_000_000_000)

        assert (0, 0.0) == f.update_lag()

    def test_the_buffer_gauge_shows_records_waiting_for_the_worker(self) -> None:
        """Buffered records are reported even before anything was processed."""
        metrics = ProcessorMetrics(CollectorRegistry())
        f = fetcher(FakeConsumer([]), metrics=metrics)
        f.open_feed(TP).push(records(0, 1, 2))

        f.update_lag()

        assert 3.0 == metrics.buffer_depth.labels(partition=str(TP.partition))._value.get()
