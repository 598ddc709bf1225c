"""Seqs across restarts against the real broker: a producer killed with SIGKILL and started
again continues every sensor's seq, so the topic holds each seq of a sensor exactly once,
in order; and the start-up read finds the right next seqs while reading little."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from kafka_helpers import consume_all, create_topic, new_topic_name
from sensorstream.producer._resume import (
    MIN_WINDOW,
    WINDOW_FACTOR,
    resume_seqs,
    sensors_by_partition,
)
from sensorstream.producer._sender import partition_for
from sensorstream.producer._simulation import SensorFleet
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import load_settings
from sensorstream.schema import SensorReading, decode_reading

SENSORS = 100
RATE = 2_000
RUN_SECONDS = 1.5
"""How long each run produces after its first acknowledgement (then it is killed)."""
PARTITIONS = 6


async def _start(bootstrap: str, topic: str, lines: list[dict[str, Any]]) -> tuple[Any, Any]:
    """``python -m sensorstream.producer`` on ``topic``, its JSON log appended to ``lines``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sensorstream.producer",
        "--bootstrap-servers", bootstrap, "--topic", topic, "--partitions", str(PARTITIONS),
        "--sensors", str(SENSORS), "--rate", str(RATE), "--summary-interval", "0.5",
        "--metrics-port", "0", "--log-format", "json",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stderr is not None

    async def collect() -> None:
        assert process.stderr is not None
        while raw := await process.stderr.readline():
            if raw.startswith(b"{"):
                lines.append(orjson.loads(raw))

    return process, asyncio.create_task(collect())


async def _run_until_acked(bootstrap: str, topic: str) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Start a producer and return once it has had acknowledgements for RUN_SECONDS."""
    lines: list[dict[str, Any]] = []
    process, reader = await _start(bootstrap, topic, lines)
    deadline = time.monotonic() + 60
    while not any(line.get("event") == "producer_summary" and line["acked"] > 0
                  for line in lines):  # fmt: skip
        assert time.monotonic() < deadline, lines
        assert not reader.done(), lines
        await asyncio.sleep(0.05)
    await asyncio.sleep(RUN_SECONDS)
    return process, reader, lines


def _seqs_in_offset_order(records: Sequence[Any]) -> dict[str, list[int]]:
    """Per sensor, its seqs as the topic holds them (its one partition, offset order)."""
    seqs: dict[str, list[int]] = {}
    partition_of: dict[str, int] = {}
    for record in records:
        reading = decode_reading(record.value)
        assert isinstance(reading, SensorReading), reading
        assert reading.seq is not None
        assert record.partition == partition_of.setdefault(reading.sensor_id, record.partition)
        seqs.setdefault(reading.sensor_id, []).append(reading.seq)
    return seqs


def _problems(seqs: dict[str, list[int]]) -> dict[str, str]:
    """Per sensor whose seqs are not 0..N-1, each once, in offset order: the first wrong spot."""
    wrong = {}
    for sensor, got in sorted(seqs.items()):
        if got != list(range(len(got))):
            at = next(i for i, seq in enumerate(got) if seq != i)
            wrong[sensor] = f"{len(got)} seqs, at #{at}: {got[max(0, at - 2) : at + 3]}"
    return wrong


class TestRestartAfterKill:
    async def test_seqs_stay_unique_and_contiguous_across_sigkill(
        self, kafka_bootstrap: str
    ) -> None:
        """Killed with SIGKILL mid-run, restarted, stopped: each sensor's seqs are 0..N-1, each
        once, in offset order, and what the second run acknowledged is in the topic once."""
        topic = new_topic_name("producer-resume")
        process, reader, lines = await _run_until_acked(kafka_bootstrap, topic)
        process.send_signal(signal.SIGKILL)  # no drain, no final line: a crash
        assert -signal.SIGKILL == await asyncio.wait_for(process.wait(), 30)
        await asyncio.wait_for(reader, 10)
        resumed = [line for line in lines if line.get("event") == "seqs_resumed"]
        before = len(await consume_all(kafka_bootstrap, topic, timeout=30))

        process, reader, lines = await _run_until_acked(kafka_bootstrap, topic)
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), 60)
        await asyncio.wait_for(reader, 10)
        resumed += [line for line in lines if line.get("event") == "seqs_resumed"]
        final = lines[-1]

        records = await consume_all(kafka_bootstrap, topic, timeout=60)
        seqs = _seqs_in_offset_order(records)
        assert {} == _problems(seqs), f"{len(records)} records"
        assert SENSORS == len(seqs)
        assert (0, "producer_stopped") == (exit_code, final["event"]), lines[-3:]
        assert final["acked"] == len(records) - before > 0  # what the last run acked, once
        # The first run found an empty topic; the second continued all 100 sensors.
        assert [(0, None), (SENSORS, True)] == [
            (line["sensors"], None if line["highest_seq"] is None else line["highest_seq"] > 0)
            for line in resumed
        ]


def _settings(bootstrap: str, topic: str) -> ProducerSettings:
    return load_settings(
        ProducerSettings,
        ["--bootstrap-servers", bootstrap, "--topic", topic, "--metrics-port", "0"],
    )


async def _write(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Write (key, value) records, each to the partition the producer would pick."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition_for(key, PARTITIONS))
            for key, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class TestStartupRead:
    async def test_fresh_topic_starts_every_sensor_at_zero(self, kafka_bootstrap: str) -> None:
        """An empty topic: next seq 0 for each sensor, nothing read."""
        topic = new_topic_name("producer-resume-fresh")
        await create_topic(kafka_bootstrap, topic, PARTITIONS)
        keys = SensorFleet(1_000).keys
        resumed = await resume_seqs(_settings(kafka_bootstrap, topic), keys, PARTITIONS)
        assert ([0] * 1_000, 0) == (resumed.next_seqs, resumed.records_read)

    async def test_long_history_finds_each_sensors_next_seq_reading_little(
        self, kafka_bootstrap: str
    ) -> None:
        """2,000 sensors with 15 readings each plus one silent since long ago: all exact,
        and only the partitions' ends are read, except where the silent one lives."""
        topic = new_topic_name("producer-resume-history")
        await create_topic(kafka_bootstrap, topic, PARTITIONS)
        fleet = SensorFleet(2_001, seed=5)
        keys = fleet.keys
        silent = keys[-1]
        history = [record for record in fleet.generate(2_001 * 3, 1) if record[0] == silent]
        history += [record for record in fleet.generate(2_001 * 15, 2) if record[0] != silent]
        await _write(kafka_bootstrap, topic, history)

        resumed = await resume_seqs(_settings(kafka_bootstrap, topic), keys, PARTITIONS)

        expected = [18] * 2_000 + [3]  # the silent sensor's readings were its first three
        assert expected == resumed.next_seqs
        # The silent sensor's partition is read to its beginning; every other one only its
        # first window (each of its sensors is in it).
        lengths = Counter(partition_for(key, PARTITIONS) for key, _ in history)
        placed = sensors_by_partition(keys, PARTITIONS)
        first_window = [max(MIN_WINDOW, WINDOW_FACTOR * len(sensors)) for sensors in placed]
        silent_partition = partition_for(silent, PARTITIONS)
        expected_read = sum(
            lengths[p] if p == silent_partition else min(lengths[p], first_window[p])
            for p in range(PARTITIONS)
        )
        assert expected_read == resumed.records_read < len(history) / 2
