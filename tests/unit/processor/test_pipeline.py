"""PartitionPipeline: decode -> window -> alert -> route, dead letters and replay."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from consumed_records import Record

from sensorstream.processor._pipeline import (
    AlertThresholds,
    BatchResult,
    PartitionPipeline,
    PipelineConfig,
)
from sensorstream.processor._windows import NO_WATERMARK
from sensorstream.schema import (
    AGGREGATES_TOPIC,
    ALERTS_TOPIC,
    DLQ_TOPIC,
    DeadLetterHeaders,
    DeadLetterReason,
    decode_aggregate,
    decode_alert,
)
from sensorstream.schema.testing import malformed_corpus, valid_payload

TOPIC = "sensor-data"
T0 = 1_700_000_000_000
"""A window boundary for 10 s windows."""
NOW = T0 / 1000 + 3600
"""The processor's clock (epoch s): an hour after T0, so every T0-based reading is past."""


class Feed:
    """Numbers records of one partition in offset order."""

    def __init__(self) -> None:
        self.offset = 0

    def record(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Record:
        record = Record(TOPIC, 3, self.offset, T0 + self.offset, key, value, headers or [])
        self.offset += 1
        return record

    def reading(
        self,
        event_time: int,
        *,
        sensor_id: str = "sensor-0001",
        seq: int = 0,
        temperature: float = 20.0,
        humidity: float = 50.0,
    ) -> Record:
        value = valid_payload(
            event_id=f"00000000-0000-4000-8000-{self.offset:012d}",
            sensor_id=sensor_id,
            seq=seq,
            event_time=event_time,
            temperature=temperature,
            humidity=humidity,
        )
        return self.record(value, key=sensor_id.encode())


def pipeline(
    *, replay_until: int = -1, watermark: int = NO_WATERMARK, **config: Any
) -> PartitionPipeline:
    """A pipeline for partition 3 of the input topic; ``config`` overrides PipelineConfig."""
    config = {"instance": "test-instance", **config}
    return PartitionPipeline(
        TOPIC, 3, PipelineConfig(**config), replay_until=replay_until, watermark=watermark
    )


def topics(result: BatchResult) -> list[str]:
    return [output.topic for output in result.outputs]


class TestValidEvents:
    def test_valid_events_go_to_the_handler_in_offset_order(self) -> None:
        """result.valid pairs each record with its decoded reading, in order."""
        feed = Feed()
        records = [feed.reading(T0 + i, seq=i) for i in range(3)]

        result = pipeline().process(records, now=NOW)

        assert [(r.offset, i) for i, r in enumerate(records)] == [
            (record.offset, reading.seq) for record, reading in result.valid
        ]
        assert (3, 0, [], (T0, T0 + 2)) == (
            result.ok,
            result.invalid,
            result.outputs,
            (result.event_time_min, result.event_time_max),
        )

    def test_closing_window_emits_its_aggregate_keyed_by_sensor(self) -> None:
        """A window closed by the watermark becomes one record on sensor-aggregates."""
        feed = Feed()
        records = [feed.reading(T0 + i * 1_000, seq=i, temperature=20.0 + i) for i in range(10)]
        records.append(feed.reading(T0 + 15_000, seq=10))

        result = pipeline().process(records, now=NOW)

        (output,) = result.outputs
        aggregate = decode_aggregate(output.value)
        assert (AGGREGATES_TOPIC, b"sensor-0001", []) == (output.topic, output.key, output.headers)
        assert (T0, T0 + 10_000, 10, 0, 9, 24.5) == (
            aggregate.window_start,
            aggregate.window_end,
            aggregate.count,
            aggregate.first_seq,
            aggregate.last_seq,
            aggregate.temperature_mean,
        )
        assert 1 == result.aggregates

    def test_alert_is_emitted_keyed_by_sensor(self) -> None:
        """A threshold crossing becomes one record on sensor-alerts, counted by kind."""
        feed = Feed()

        result = pipeline().process(
            [feed.reading(T0, temperature=50.0), feed.reading(T0 + 1, temperature=51.0)], now=NOW
        )

        (output,) = result.outputs
        assert (ALERTS_TOPIC, b"sensor-0001") == (output.topic, output.key)
        assert ("temperature_high", 50.0) == (
            decode_alert(output.value).kind,
            decode_alert(output.value).value,
        )
        assert Counter({"temperature_high": 1}) == result.alerts

    def test_thresholds_come_from_the_config(self) -> None:
        """PipelineConfig.thresholds drives the alert rules."""
        feed = Feed()

        result = pipeline(thresholds=AlertThresholds(humidity_high=60.0)).process(
            [feed.reading(T0, humidity=61.0)], now=NOW
        )

        assert Counter({"humidity_high": 1}) == result.alerts

    def test_output_topics_are_configurable(self) -> None:
        """Aggregates and alerts go to the configured topics."""
        feed = Feed()
        records = [feed.reading(T0, temperature=99.0), feed.reading(T0 + 20_000)]

        result = pipeline(aggregates_topic="aggs", alerts_topic="alarms").process(records, now=NOW)

        assert ["alarms", "aggs"] == topics(result)

    def test_without_a_handler_nothing_is_collected_but_everything_is_counted(self) -> None:
        """collect_valid=False skips the handler pairs; counts and event times stay."""
        feed = Feed()
        records = [feed.reading(T0 + i, seq=i) for i in range(3)]

        result = PartitionPipeline(
            "sensor-data", 0, PipelineConfig(instance="test"), collect_valid=False
        ).process(records, now=NOW)

        assert ([], 3, (T0, T0 + 2)) == (
            result.valid,
            result.ok,
            (result.event_time_min, result.event_time_max),
        )


class TestDeadLetters:
    @pytest.mark.parametrize(("reason", "value"), malformed_corpus())
    def test_every_malformed_payload_is_dead_lettered_with_its_reason(
        self, reason: str, value: bytes
    ) -> None:
        """Original key, value and headers kept; reason, error and origin added."""
        feed = Feed()
        feed.offset = 41
        original_headers = [("trace-id", b"abc")]
        record = feed.record(value, key=b"sensor-0007", headers=original_headers)

        result = pipeline().process([record], now=NOW)

        (output,) = result.outputs
        headers = DeadLetterHeaders.from_kafka_headers(output.headers)
        assert (DLQ_TOPIC, b"sensor-0007", value) == (output.topic, output.key, output.value)
        assert original_headers == output.headers[: len(original_headers)]
        assert (reason, TOPIC, 3, 41, T0 + 41, "test-instance") == (
            headers.reason,
            headers.original_topic,
            headers.original_partition,
            headers.original_offset,
            headers.original_timestamp,
            headers.instance,
        )
        assert headers.error
        assert (0, 1, Counter({reason: 1}), []) == (
            result.ok,
            result.invalid,
            result.dead_letters,
            result.valid,
        )

    def test_tombstone_is_dead_lettered_as_empty(self) -> None:
        """A None value (tombstone) is refused as empty."""
        result = pipeline().process([Feed().record(None)], now=NOW)

        assert Counter({"empty": 1}) == result.dead_letters

    def test_batch_mixing_good_and_bad_events(self) -> None:
        """Bad events are dead-lettered in place; good ones around them flow on."""
        feed = Feed()
        records = [
            feed.reading(T0, seq=0),
            feed.record(b"not json"),
            feed.reading(T0 + 1, seq=1),
            feed.record(b"[1]"),
            feed.reading(T0 + 2, seq=2, temperature=60.0),
        ]

        result = pipeline().process(records, now=NOW)

        assert [0, 2, 4] == [record.offset for record, _ in result.valid]
        assert [DLQ_TOPIC, DLQ_TOPIC, ALERTS_TOPIC] == topics(result)
        assert (3, 2, Counter({"not_json": 1, "not_object": 1})) == (
            result.ok,
            result.invalid,
            result.dead_letters,
        )


class TestLateEvents:
    def records(self, feed: Feed) -> list[Record]:
        return [feed.reading(T0 + 30_000), feed.reading(T0, sensor_id="sensor-late")]

    def test_late_events_are_dead_lettered_with_their_lateness(self) -> None:
        """By default a late event goes to the DLQ (late_event), is counted, not handled."""
        result = pipeline().process(self.records(Feed()), now=NOW)

        (output,) = result.outputs
        headers = DeadLetterHeaders.from_kafka_headers(output.headers)
        assert (DeadLetterReason.LATE_EVENT, b"sensor-late", 30_000) == (
            headers.reason,
            output.key,
            headers.lateness_ms,
        )
        assert (1, 0, Counter({"late_event": 1}), 1) == (
            result.late,
            result.dropped,
            result.dead_letters,
            len(result.valid),
        )

    def test_drop_late_counts_them_and_still_handles_them(self) -> None:
        """With drop_late a late event is counted (dropped), not windowed, not dead-lettered,
        and still goes to the handler."""
        result = pipeline(drop_late=True).process(self.records(Feed()), now=NOW)

        assert (1, 1, 1, [], 2) == (
            result.ok,
            result.late,
            result.dropped,
            result.outputs,
            len(result.valid),
        )


class TestFutureEventTime:
    SKEW_MS = 300_000

    def test_a_reading_beyond_the_skew_is_dead_lettered_and_moves_no_watermark(self) -> None:
        """An event time more than max_future_skew ahead of now: DLQ, not windowed."""
        feed = Feed()
        now_ms = int(NOW * 1000)
        p = pipeline(max_future_skew_ms=self.SKEW_MS)
        records = [
            feed.reading(now_ms - 1_000, seq=0),
            feed.reading(4_070_908_800_000, seq=1),  # 2099
            feed.reading(now_ms, seq=2),
        ]

        result = p.process(records, now=NOW)

        (output,) = result.outputs
        headers = DeadLetterHeaders.from_kafka_headers(output.headers)
        assert (DeadLetterReason.FUTURE_EVENT_TIME, 1) == (headers.reason, headers.original_offset)
        assert "ahead of the processor's clock" in headers.error
        assert (2, 1, now_ms - 5_000) == (result.ok, result.future, p.watermark)
        assert [0, 2] == [record.offset for record, _ in result.valid]

    def test_a_reading_within_the_skew_is_windowed(self) -> None:
        """A clock a little ahead (within the bound) is a normal reading."""
        now_ms = int(NOW * 1000)
        result = pipeline(max_future_skew_ms=self.SKEW_MS).process(
            [Feed().reading(now_ms + self.SKEW_MS, seq=0)], now=NOW
        )

        assert (1, 0, []) == (result.ok, result.future, result.outputs)

    def test_a_replayed_future_reading_is_not_dead_lettered_again(self) -> None:
        """Below replay_until the DLQ record was written before the restart."""
        result = pipeline(replay_until=1).process([Feed().reading(4_070_908_800_000)], now=NOW)

        assert ([], 1, 0) == (result.outputs, result.replayed, result.future)

    @pytest.mark.parametrize(
        ("watermark", "trusted"),
        [
            (NO_WATERMARK, NO_WATERMARK),
            (int(NOW * 1000) - 5_000, int(NOW * 1000) - 5_000),
            (int(NOW * 1000) + 300_000 - 5_000, int(NOW * 1000) + 300_000 - 5_000),
            (int(NOW * 1000) + 300_000 - 4_999, NO_WATERMARK),
            (4_070_908_800_000, NO_WATERMARK),
        ],
    )
    def test_a_restored_watermark_is_held_to_the_same_bound(
        self, watermark: int, trusted: int
    ) -> None:
        """A committed watermark only a too-far-future reading could set is dropped."""
        config = PipelineConfig(instance="i", max_future_skew_ms=300_000, allowed_lateness_ms=5_000)

        assert trusted == config.trusted_watermark(watermark, NOW)


class TestOversizedDeadLetters:
    def test_a_dead_letter_over_the_dlq_limit_is_cut_to_fit_and_counted(self) -> None:
        """The value is cut, its size and hash go into the headers; nothing is dropped."""
        value = b"x" * 100_000  # too_large for the schema
        result = pipeline(dlq_max_bytes=50_000).process([Feed().record(value)], now=NOW)

        (output,) = result.outputs
        headers = DeadLetterHeaders.from_kafka_headers(output.headers)
        assert (1, True, DeadLetterReason.TOO_LARGE, 100_000) == (
            result.truncated,
            output.truncated,
            headers.reason,
            headers.original_size,
        )
        assert output.value is not None
        assert value.startswith(output.value)
        assert 40_000 < len(output.value) < 50_000


class TestIdleClose:
    def test_idle_partition_emits_every_open_window(self) -> None:
        """When the runtime finds the partition idle, every open window is emitted."""
        p = pipeline()
        feed = Feed()
        p.process([feed.reading(T0), feed.reading(T0 + 12_000, sensor_id="b")], now=NOW)

        result = p.close_idle()

        assert ([AGGREGATES_TOPIC] * 2, 2, 0, None) == (
            topics(result),
            result.aggregates,
            p.open_windows,
            p.commit_floor(),
        )

    def test_nothing_open_emits_nothing(self) -> None:
        """An idle close of an empty partition is a no-op."""
        result = pipeline().close_idle()

        assert ([], 0) == (result.outputs, result.aggregates)


# One worker's life on one partition: ("process", records) or ("idle", []), an idle
# close the runtime decided (the broker confirmed the partition silent long enough).
Step = tuple[str, list[Record], float]


class TestIdleRestart:
    def steps(self) -> list[Step]:
        """Sensor a's old window stays touched while b's newer one goes quiet, then idle."""
        feed = Feed()
        return [
            ("process", [feed.reading(T0 + 1_000, sensor_id="a", seq=0)], NOW),
            ("process", [feed.reading(T0 + 12_000, sensor_id="b", seq=0)], NOW),
            ("process", [feed.reading(T0 + 2_000, sensor_id="a", seq=1)], NOW),
            ("idle", [], NOW),
            ("process", [feed.reading(T0 + 21_000, sensor_id="a", seq=2)], NOW),
            ("process", [feed.reading(T0 + 22_000, sensor_id="b", seq=1)], NOW),
            ("process", [feed.reading(T0 + 60_000, sensor_id="c", seq=0)], NOW),
            ("process", [feed.reading(T0 + 90_000, sensor_id="c", seq=1)], NOW),
        ]

    @staticmethod
    def run(p: PartitionPipeline, steps: list[Step]) -> list[bytes]:
        outputs: list[bytes] = []
        for kind, records, now in steps:
            result = p.process(records, now) if kind == "process" else p.close_idle()
            outputs.extend(o.value for o in result.outputs if o.value is not None)
        return outputs

    @pytest.mark.parametrize("cut", range(1, 8))
    def test_restart_after_an_idle_close_emits_no_duplicate(self, cut: int) -> None:
        """Restart at the commit of any step: each window emitted once, no count lost."""
        steps = self.steps()
        records = [r for _, batch, _ in steps for r in batch]
        uninterrupted = self.run(pipeline(), steps)
        first = pipeline()
        before = self.run(first, steps[:cut])
        next_offset = sum(len(batch) for _, batch, _ in steps[:cut])
        floor = first.commit_floor()
        committed = next_offset if floor is None else min(next_offset, floor)
        restarted = pipeline(replay_until=next_offset)
        now = steps[cut - 1][2]

        replayed = restarted.process(records[committed:next_offset], now=now)
        after = self.run(restarted, steps[cut:])

        emitted = [decode_aggregate(value) for value in before + after]
        windows = [(a.sensor_id, a.window_start) for a in emitted]
        assert [] == replayed.outputs
        assert len(set(windows)) == len(windows)
        assert sorted(uninterrupted) == sorted(before + after)

    def test_a_late_reading_after_an_idle_close_stays_late_after_a_restart(self) -> None:
        """The watermark an idle close set survives a restart: no second, partial window."""
        feed = Feed()
        first = pipeline()
        emitted = first.process([feed.reading(T0 + 11_000, sensor_id="a", seq=0)], NOW).outputs
        emitted += first.close_idle().outputs  # idle: a's window closes, watermark T0+20s
        replay = [
            feed.reading(T0 + 21_000, sensor_id="b", seq=0),  # opens b's window
            feed.reading(T0 + 12_000, sensor_id="a", seq=1),  # late for a's closed window
        ]
        result = first.process(replay, NOW)
        floor, watermark = first.commit_floor(), first.watermark
        restarted = pipeline(replay_until=3, watermark=watermark)
        restarted.process(replay[floor - 1 :], NOW)
        emitted += restarted.close_idle().outputs

        windows = [
            (a.sensor_id, a.window_start, a.count)
            for a in (
                decode_aggregate(o.value)
                for o in emitted
                if o.value is not None and o.topic == AGGREGATES_TOPIC
            )
        ]
        assert (1, 1) == (floor, result.late)
        assert [("a", T0 + 10_000, 1), ("b", T0 + 20_000, 1)] == windows


class TestReplay:
    def stream(self) -> list[Record]:
        """Sensor a: 10 readings in [T0, T0+10s), 10 in [T0+10s, T0+20s), then one at T0+25s."""
        feed = Feed()
        records = [feed.reading(T0 + i * 1_000, seq=i, temperature=20.0 + i) for i in range(20)]
        records.append(feed.reading(T0 + 25_000, seq=20))
        return records

    def test_replayed_events_emit_nothing(self) -> None:
        """Below replay_until: no aggregates, no alerts, no handler calls; counted as replayed."""
        records = self.stream()
        records[3] = Feed().record(b"junk")
        records[3].offset = 3

        result = pipeline(replay_until=len(records)).process(records, now=NOW)

        assert ([], [], 21, 0) == (result.outputs, result.valid, result.replayed, result.ok)

    @pytest.mark.parametrize("cut", [1, 10, 15, 16, 19, 20])
    def test_restart_at_the_commit_emits_each_aggregate_once_and_complete(self, cut: int) -> None:
        """Outputs before the restart + after it == outputs of an uninterrupted run."""
        records = [*self.stream(), Feed().reading(T0 + 40_000)]
        records[-1].offset = len(records) - 1
        uninterrupted = pipeline().process(records, now=NOW)
        first_run = pipeline()
        before = first_run.process(records[:cut], now=NOW)
        floor = first_run.commit_floor()
        restarted = pipeline(replay_until=cut)

        replayed = restarted.process(records[cut if floor is None else floor : cut], now=NOW)
        after = restarted.process(records[cut:], now=NOW)

        assert [] == replayed.outputs
        assert [o.value for o in uninterrupted.outputs] == [
            o.value for o in before.outputs + after.outputs
        ]
        assert 3 == uninterrupted.aggregates

    def test_window_closing_during_replay_is_not_emitted_again(self) -> None:
        """A window already emitted before the restart stays emitted once."""
        records = self.stream()
        restarted = pipeline(replay_until=21)

        result = restarted.process(records, now=NOW)

        assert ([], 21, 1) == (result.outputs, result.replayed, restarted.open_windows)

    def test_batch_straddling_replay_until(self) -> None:
        """Records from replay_until on are processed normally in the same batch."""
        records = self.stream()

        result = pipeline(replay_until=20).process(records, now=NOW)

        assert (20, 1, [20]) == (
            result.replayed,
            result.ok,
            [record.offset for record, _ in result.valid],
        )
        (output,) = result.outputs  # the live event's watermark closes [T0+10s, T0+20s)
        assert (10, 10, 19) == (
            decode_aggregate(output.value).count,
            decode_aggregate(output.value).first_seq,
            decode_aggregate(output.value).last_seq,
        )

    def test_alert_state_is_rebuilt_by_replay(self) -> None:
        """An alert raised before the restart is not raised again by the next hot reading."""
        feed = Feed()
        records = [feed.reading(T0, temperature=50.0), feed.reading(T0 + 1, temperature=50.5)]

        result = pipeline(replay_until=1).process(records, now=NOW)

        assert ([], 1) == (result.outputs, result.replayed)


class TestConfig:
    def test_defaults_match_the_contract(self) -> None:
        """10 s windows, 5 s lateness, 5 min future skew, late events dead-lettered, 4 MiB DLQ."""
        config = PipelineConfig(instance="i")

        assert (
            10_000,
            5_000,
            300_000,
            False,
            4 * 1024 * 1024,
            AGGREGATES_TOPIC,
            ALERTS_TOPIC,
            DLQ_TOPIC,
        ) == (
            config.window_size_ms,
            config.allowed_lateness_ms,
            config.max_future_skew_ms,
            config.drop_late,
            config.dlq_max_bytes,
            config.aggregates_topic,
            config.alerts_topic,
            config.dlq_topic,
        )

    def test_rejects_a_zero_window(self) -> None:
        """A window must have a size."""
        with pytest.raises(ValueError, match="window_size_ms"):
            PipelineConfig(instance="i", window_size_ms=0)

    def test_outputs_are_json(self) -> None:
        """Aggregate values are plain JSON objects."""
        feed = Feed()
        result = pipeline().process([feed.reading(T0), feed.reading(T0 + 20_000)], now=NOW)

        assert "sensor-0001" == orjson.loads(result.outputs[0].value or b"")["sensor_id"]
