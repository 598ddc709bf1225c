"""Resuming seqs at start-up without a broker: the partition mapping, the backward windows
and their stopping rule, folding records into next seqs, and the read loop on a fake
consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from aiokafka.partitioner import DefaultPartitioner
from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks
from structlog.testing import capture_logs

from sensorstream.producer import _resume as resume_module
from sensorstream.producer._resume import (
    MIN_WINDOW,
    NONE,
    WINDOW_FACTOR,
    PartitionScan,
    ResumedSeqs,
    fold_records,
    next_seqs,
    read_highest_seqs,
    resume_seqs,
    sensors_by_partition,
)
from sensorstream.producer._sender import partition_for
from sensorstream.producer._simulation import SensorFleet, sensor_ids
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import (
    ConfigError,
    KafkaUnavailableError,
    RetriableError,
    StopSignal,
    instrument_retries,
    load_settings,
)

TOPIC = "sensor-data"
T0 = 1_700_000_000_000


@pytest.fixture(autouse=True)
def restored_retry_hooks() -> Iterator[None]:
    """instrument_retries replaces stamina's global hooks: put the previous ones back."""
    hooks = get_on_retry_hooks()
    yield
    set_on_retry_hooks(hooks)


class Record(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


def _keys(count: int) -> list[bytes]:
    return [sensor.encode() for sensor in sensor_ids(count)]


def _value(seq: int) -> bytes:
    return b'{"schema_version":1,"event_id":"x","sensor_id":"s","seq":%d,"event_time":1}' % seq


class FakeConsumer:
    """A consumer over in-memory partitions, as ``read_highest_seqs`` uses one.

    ``getmany`` returns up to ``fetch`` records per partition from its position on, also
    past the window being read (a real fetch returns whole batches and prefetches);
    ``fetched`` counts every record handed out.
    """

    def __init__(
        self,
        partitions: Sequence[Sequence[Record]],
        *,
        beginnings: Sequence[int] | None = None,
        fetch: int = 300,
    ) -> None:
        self.logs = [list(records) for records in partitions]
        self.beginnings = list(beginnings or [0] * len(partitions))
        self.fetch = fetch
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.fetched = 0
        self.seeks: list[tuple[int, int]] = []
        self.stalled = False

    def _end(self, partition: int) -> int:
        return self.beginnings[partition] + len(self.logs[partition])

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginnings[tp.partition] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end(tp.partition) for tp in tps}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned
        self.seeks.append((tp.partition, offset))
        self.positions[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0
    ) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0)
        if self.stalled:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        out: dict[TopicPartition, list[Record]] = {}
        for tp in tps:
            assert tp not in self.paused
            position = self.positions[tp]
            start = position - self.beginnings[tp.partition]
            records = self.logs[tp.partition][start : start + self.fetch]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
                self.fetched += len(records)
        return out


def _topic_of(fleet: SensorFleet, readings: int, partitions: int) -> list[list[Record]]:
    """The partitions a fleet's first ``readings`` readings land on, as the sender puts them."""
    logs: list[list[Record]] = [[] for _ in range(partitions)]
    for key, value in fleet.generate(readings, T0):
        log = logs[partition_for(key, partitions)]
        log.append(Record(len(log), key, value))
    return logs


class TestSensorsByPartition:
    def test_same_partition_as_the_sender_and_aiokafka(self) -> None:
        """Each sensor is on the partition the sender and aiokafka's default partitioner pick."""
        keys = _keys(500)
        placed = sensors_by_partition(keys, 6)
        partitioner = DefaultPartitioner()
        assert sorted(range(500)) == sorted(s for sensors in placed for s in sensors)
        for partition, sensors in enumerate(placed):
            for sensor in sensors:
                assert partition == partition_for(keys[sensor], 6)
                assert partition == partitioner(keys[sensor], list(range(6)), [])

    @pytest.mark.parametrize(
        ("key", "java_murmur2"),
        [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"abc", 479470107),
        ],
    )
    def test_same_partition_as_the_java_client(self, key: bytes, java_murmur2: int) -> None:
        """Kafka's own murmur2 test vectors (UtilsTest), partitioned as Java's toPositive % n."""
        for partitions in (1, 6, 7, 100):
            [found] = [p for p, s in enumerate(sensors_by_partition([key], partitions)) if s]
            assert (java_murmur2 & 0x7FFFFFFF) % partitions == found


class TestNextSeqs:
    def test_one_after_the_highest_and_zero_for_none(self) -> None:
        """Next seq = 1 + the highest stored; a sensor with nothing stored starts at 0."""
        assert [0, 1, 42] == next_seqs([NONE, 0, 41])

    def test_summary(self) -> None:
        """The log line's numbers: sensors with something stored, the highest seq overall."""
        assert (2, 41) == (
            ResumedSeqs(next_seqs=[0, 1, 42]).sensors_resumed,
            ResumedSeqs(next_seqs=[0, 1, 42]).highest_seq,
        )
        assert (0, None) == (
            ResumedSeqs(next_seqs=[0, 0]).sensors_resumed,
            ResumedSeqs(next_seqs=[0, 0]).highest_seq,
        )


class TestPartitionScan:
    def test_first_window_is_the_end_sized_by_the_sensors(self) -> None:
        """The first window: the last WINDOW_FACTOR records per sensor, at least MIN_WINDOW."""
        many = PartitionScan(0, range(5_000), beginning=0, end=1_000_000)
        few = PartitionScan(0, range(3), beginning=0, end=1_000_000)
        assert (1_000_000 - WINDOW_FACTOR * 5_000, 1_000_000) == (many.low, many.high)
        assert (1_000_000 - MIN_WINDOW, 1_000_000) == (few.low, few.high)

    def test_windows_double_backwards(self) -> None:
        """Each next window is twice as long and ends where the previous one began."""
        scan = PartitionScan(0, [7], beginning=0, end=100_000, minimum=1_000)
        windows = [(scan.low, scan.high)]
        for _ in range(3):
            scan.window_read()
            windows.append((scan.low, scan.high))
        assert [(99_000, 100_000), (97_000, 99_000), (93_000, 97_000), (85_000, 93_000)] == windows
        assert not scan.done

    def test_done_when_every_sensor_is_found(self) -> None:
        """Stopping rule: no sensor of the partition missing after a window."""
        scan = PartitionScan(0, [1, 2], beginning=0, end=100_000)
        scan.missing.clear()
        scan.window_read()
        assert scan.done

    def test_done_at_the_beginning_with_sensors_missing(self) -> None:
        """Stopping rule: a window that started at the beginning was the last, found or not."""
        scan = PartitionScan(0, [1], beginning=500, end=3_600, minimum=1_000)
        lows = [scan.low]
        while not scan.done:
            scan.window_read()
            lows.append(scan.low)
        assert [2_600, 600, 500, 500] == lows
        assert {1} == scan.missing

    @pytest.mark.parametrize(("sensors", "beginning", "end"), [([1], 40, 40), ([], 0, 100)])
    def test_nothing_to_read(self, sensors: list[int], beginning: int, end: int) -> None:
        """An empty partition, or one no sensor maps to, is done before reading anything."""
        assert PartitionScan(0, sensors, beginning=beginning, end=end).done


class TestFoldRecords:
    def test_highest_seq_per_sensor_and_found(self) -> None:
        """Each fleet sensor's highest seq in the window is kept, and it is no longer missing."""
        highest = [NONE, NONE, 3]
        missing = {0, 1, 2}
        records = [
            Record(10, b"a", _value(4)),
            Record(11, b"a", _value(2)),
            Record(12, b"c", _value(1)),
        ]
        taken = fold_records(
            records, high=100, sensor_of={b"a": 0, b"c": 2}, highest=highest, missing=missing
        )
        assert ((3, 0), [4, NONE, 3], {1}) == (taken, highest, missing)

    def test_records_from_the_window_end_on_are_left(self) -> None:
        """Records at or past ``high`` (read already, or prefetched) are not counted."""
        highest = [NONE]
        missing = {0}
        records = [Record(9, b"a", _value(1)), Record(10, b"a", _value(2))]
        taken = fold_records(
            records, high=10, sensor_of={b"a": 0}, highest=highest, missing=missing
        )
        assert ((1, 0), [1]) == (taken, highest)

    def test_other_keys_and_undecodable_values_are_skipped(self) -> None:
        """Another key is ignored; a sensor's record with no readable seq is counted, not found."""
        highest = [NONE]
        missing = {0}
        records = [
            Record(0, None, _value(9)),
            Record(1, b"other", _value(9)),
            Record(2, b"a", None),
            Record(3, b"a", b"not json"),
            Record(4, b"a", b'{"seq":null,"x":1}'),
        ]
        taken = fold_records(
            records, high=10, sensor_of={b"a": 0}, highest=highest, missing=missing
        )
        assert ((5, 3), [NONE], {0}) == (taken, highest, missing)


class TestReadHighestSeqs:
    async def test_fresh_topic_reads_nothing(self) -> None:
        """An empty topic: every sensor starts at 0, no window sought, nothing fetched."""
        consumer = FakeConsumer([[], [], []])
        resumed = await read_highest_seqs(consumer, TOPIC, _keys(100_000), 3)
        assert ([0] * 100_000, 0, []) == (resumed.next_seqs, consumer.fetched, consumer.seeks)

    async def test_continues_after_a_long_history_reading_about_twice_the_fleet(self) -> None:
        """500 sensors with 100 readings each: next seq 100 each, reading ~2 records per sensor."""
        fleet = SensorFleet(500, seed=1)
        consumer = FakeConsumer(_topic_of(fleet, 50_000, 6))
        resumed = await read_highest_seqs(consumer, TOPIC, fleet.keys, 6)
        assert [fleet.next_seq(i) for i in range(500)] == resumed.next_seqs == [100] * 500
        assert resumed.complete
        assert resumed.records_read <= 6 * MIN_WINDOW
        assert consumer.fetched < 50_000 / 4

    async def test_a_sensor_last_seen_far_back_is_found(self) -> None:
        """A sensor that stopped long ago: the windows grow back until it is found."""
        key = b"sensor-0000"
        old = [Record(o, key, _value(o)) for o in range(7)]
        noise = [Record(o, b"gone", _value(0)) for o in range(7, 20_007)]
        consumer = FakeConsumer([old + noise])
        resumed = await read_highest_seqs(consumer, TOPIC, [key], 1)
        assert [7] == resumed.next_seqs
        windows = [offset for partition, offset in consumer.seeks]
        assert [19_007, 17_007, 13_007, 5_007, 0] == windows

    async def test_a_sensor_with_nothing_stored_reads_its_partition_to_the_beginning(
        self,
    ) -> None:
        """A sensor new to the topic starts at 0; its partition is read once, to its start."""
        fleet = SensorFleet(20, seed=2)
        logs = _topic_of(fleet, 2_000, 1)
        keys = [*fleet.keys, b"sensor-new"]
        consumer = FakeConsumer(logs, beginnings=[0])
        resumed = await read_highest_seqs(consumer, TOPIC, keys, 1)
        assert ([100] * 20 + [0], 2_000) == (resumed.next_seqs, resumed.records_read)

    async def test_partitions_are_paused_when_done(self) -> None:
        """A partition whose sensors are all found stops being fetched."""
        fleet = SensorFleet(60, seed=3)
        consumer = FakeConsumer(_topic_of(fleet, 60 * 50, 3))
        await read_highest_seqs(consumer, TOPIC, fleet.keys, 3)
        assert set(consumer.assigned) == consumer.paused

    async def test_a_stop_request_cuts_it_short(self) -> None:
        """SIGTERM while reading: the result says it is incomplete."""
        stop = StopSignal()
        stop.request("test")
        fleet = SensorFleet(5, seed=4)
        consumer = FakeConsumer(_topic_of(fleet, 500, 1))
        resumed = await read_highest_seqs(consumer, TOPIC, fleet.keys, 1, stop=stop)
        assert not resumed.complete

    async def test_reading_nothing_is_retriable(self) -> None:
        """A fetch that brings nothing for ``stall_seconds`` raises RetriableError."""
        fleet = SensorFleet(5, seed=4)
        consumer = FakeConsumer(_topic_of(fleet, 500, 1))
        consumer.stalled = True
        with pytest.raises(RetriableError, match=r"nothing read for 0\.3 s"):
            await read_highest_seqs(consumer, TOPIC, fleet.keys, 1, stall_seconds=0.3)


def _settings(*argv: str) -> ProducerSettings:
    return load_settings(ProducerSettings, ["--metrics-port", "0", *argv])


class TestResumeSeqs:
    async def test_unreachable_broker_is_retried_then_fatal(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A broker that stays away: retried ('resume seqs'), then one line naming the way out."""
        closed: list[int] = []

        class Unreachable:
            def __init__(self, **options: object) -> None:
                assert "read_uncommitted" == options["isolation_level"]
                assert None is options["group_id"]

            async def start(self) -> None:
                raise KafkaConnectionError("Unable to bootstrap")

            async def stop(self) -> None:
                closed.append(1)

        monkeypatch.setattr(resume_module, "AIOKafkaConsumer", Unreachable)
        instrument_retries(None)
        with (
            capture_logs() as logs,
            pytest.raises(KafkaUnavailableError, match="--no-resume-seq") as info,
        ):
            await resume_seqs(_settings("--startup-timeout", "0.5"), _keys(3), 6)
        retries = [log for log in logs if log["event"] == "retry_scheduled"]
        assert {"resume seqs"} == {log["operation"] for log in retries}
        assert len(retries) + 1 == len(closed)
        assert "SENSORSTREAM_RESUME_SEQ=false" in str(info.value)

    async def test_authorization_failure_is_not_retried(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No read rights on the topic is a configuration problem: fatal at once."""

        class Denied:
            def __init__(self, **options: object) -> None:
                pass

            async def start(self) -> None:
                pass

            def assign(self, tps: object) -> None:
                pass

            def pause(self, *tps: object) -> None:
                pass

            async def beginning_offsets(self, tps: object) -> object:
                raise TopicAuthorizationFailedError(TOPIC)

            async def stop(self) -> None:
                pass

        monkeypatch.setattr(resume_module, "AIOKafkaConsumer", Denied)
        with capture_logs() as logs, pytest.raises(ConfigError, match="resume the seqs"):
            await resume_seqs(_settings(), _keys(3), 6)
        assert [] == [log for log in logs if log["event"] == "retry_scheduled"]
