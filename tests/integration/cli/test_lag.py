"""``sensorstream lag`` against a real processor group on the real broker.

Each number the CLI prints is checked against the same fact read independently: the
group's commits through the admin API, the end offsets through a consumer, the age of
the oldest unprocessed record from that record's own timestamp, the owner from the
processor's pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from processor_support import (
    Processor,
    Topics,
    committed_offsets,
    end_offsets,
    make_input,
    produce_readings,
    start_processor,
    stop_all,
    wait_until,
)

from kafka_helpers import consume_all, create_topic, new_topic_name

PARTITIONS = 3
SENSORS = 12
PER_SENSOR = 5  # 60 readings per batch


def command(bootstrap: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "sensorstream.cli", "--bootstrap-servers", bootstrap, *args]


def clean_env() -> dict[str, str]:
    """This environment without SENSORSTREAM_* (the CLI must get its settings from us)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTREAM_")}


def sensorstream(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sensorstream.cli --bootstrap-servers B ARGS``, no SENSORSTREAM_* set."""
    return subprocess.run(
        command(bootstrap, *args),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Lag:
    """One ``lag --json`` run: its exit status, output and when it ran."""

    def __init__(self, result: subprocess.CompletedProcess[str], before: float, after: float):
        assert result.returncode in (0, 1), result.stderr
        self.status = result.returncode
        self.document: Any = json.loads(result.stdout)
        self.before, self.after = before, after

    def group(self, group: str) -> dict[str, Any]:
        [found] = [g for g in self.document["groups"] if g["group"] == group]
        return found

    def partitions(self, group: str) -> dict[int, dict[str, Any]]:
        return {p["partition"]: p for p in self.group(group)["partitions"]}


async def lag(bootstrap: str, topics: Topics, *args: str) -> Lag:
    before = time.time()
    result = await asyncio.to_thread(
        sensorstream, bootstrap, "lag", "--json", "--topic", topics.input, *args
    )
    return Lag(result, before, time.time())


async def first_timestamps(bootstrap: str, topic: str, at: dict[int, int]) -> dict[int, float]:
    """Per partition, the timestamp (s) of the record at offset ``at[partition]``."""
    records = await consume_all(bootstrap, topic)
    return {
        r.partition: r.timestamp / 1000
        for r in records
        if r.partition in at and r.offset == at[r.partition]
    }


async def members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    [entry] = response.groups
    return len(entry[5])


def assert_age(found: Lag, group: str, oldest: dict[int, float]) -> None:
    """Every lagging partition's lag in seconds is the age of its oldest unprocessed
    record when the CLI read the offsets (``taken_at``, which lies within the run; both
    to the millisecond); every caught-up one's is 0."""
    taken_at = datetime.fromisoformat(found.document["taken_at"]).timestamp()
    assert found.before <= taken_at + 0.001
    assert taken_at <= found.after
    for partition, row in found.partitions(group).items():
        if row["lag"] == 0:
            assert 0 == row["lag_seconds"], row
        else:
            assert row["lag_seconds"] > 0
            assert abs(taken_at - oldest[partition] - row["lag_seconds"]) <= 0.002, (
                row,
                taken_at,
                oldest[partition],
            )


class TestLag:
    async def test_lag_follows_a_processor_group_through_backlog_catch_up_and_stop(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Before the processor starts, lag is the whole input with no commits and no
        owner; while it runs and has caught up, lag is 0 at the group's own commits and
        the processor owns every partition; after it stops, a new backlog is end minus
        the commits it left, aged by its oldest record, with no owner. --max-lag exits 1
        exactly when a partition is over it, and the group is found without --group."""
        bootstrap = kafka_bootstrap
        topics = Topics.fresh("cli-lag")
        group = topics.group
        await make_input(bootstrap, topics, partitions=PARTITIONS)
        await produce_readings(
            bootstrap, topics.input, sensors=SENSORS, per_sensor=PER_SENSOR, rate=2000
        )
        await asyncio.sleep(0.5)  # the backlog has an age worth measuring

        # 1. A backlog and no commits yet: lag is every record from the log start.
        ends = await end_offsets(bootstrap, topics.input)
        found = await lag(bootstrap, topics, "--group", group)
        assert 0 == found.status
        assert {p: (None, end, end, None) for p, end in ends.items()} == {
            p: (row["committed"], row["end"], row["lag"], row["owner"])
            for p, row in found.partitions(group).items()
        }
        assert (SENSORS * PER_SENSOR, 0) == (
            found.group(group)["lag"],
            found.group(group)["members"],
        )
        assert_age(
            found, group, await first_timestamps(bootstrap, topics.input, dict.fromkeys(ends, 0))
        )
        worst = max(ends.values())
        assert (
            1
            == (await lag(bootstrap, topics, "--group", group, "--max-lag", str(worst - 1))).status
        )
        assert 0 == (await lag(bootstrap, topics, "--group", group, "--max-lag", str(worst))).status

        # 2. The processor runs and has caught up: lag 0 at its commits, it owns them all.
        processor = start_processor(bootstrap, topics, tmp_path)
        processes: list[Processor] = [processor]
        try:
            await processor.wait_ready()
            await wait_until(
                lambda: committed_offsets(bootstrap, topics),
                lambda offsets: {p: o for p, (o, _) in offsets.items()} == ends,
                within=60,
                what=f"the group's commits at the input's end {ends}",
            )
            commits = {p: o for p, (o, _) in (await committed_offsets(bootstrap, topics)).items()}
            found = await lag(bootstrap, topics, "--group", group, "--max-lag", "0")
            client_id = f"sensorstream-processor-{socket.gethostname()}-{processor.pid}"
            assert 0 == found.status
            assert {p: (commits[p], end, 0, 0, client_id) for p, end in ends.items()} == {
                p: (
                    row["committed"],
                    row["end"],
                    row["lag"],
                    row["lag_seconds"],
                    row["owner"]["client_id"],
                )
                for p, row in found.partitions(group).items()
            }
            assert ("Stable", 1, 0) == (
                found.group(group)["state"],
                found.group(group)["members"],
                found.group(group)["lag"],
            )

            # 3. Stopped, then a new backlog: lag from the commits it left, no owner.
            assert 0 == await processor.terminate()
            await wait_until(
                lambda: members(bootstrap, group),
                lambda n: n == 0,
                within=30,
                what=f"group {group} without members",
            )
        finally:
            stop_all(processes)
        # In two bursts a second apart: the age is the older burst's, not the newer's.
        for _ in range(2):
            await produce_readings(
                bootstrap, topics.input, sensors=SENSORS, per_sensor=PER_SENSOR, rate=2000
            )
            await asyncio.sleep(1.0)
        ends = await end_offsets(bootstrap, topics.input)
        after_stop = {p: o for p, (o, _) in (await committed_offsets(bootstrap, topics)).items()}
        assert commits == after_stop
        found = await lag(bootstrap, topics, "--group", group)
        assert {p: (commits[p], end, end - commits[p], None) for p, end in ends.items()} == {
            p: (row["committed"], row["end"], row["lag"], row["owner"])
            for p, row in found.partitions(group).items()
        }
        assert (2 * SENSORS * PER_SENSOR, "Empty") == (
            found.group(group)["lag"],
            found.group(group)["state"],
        )
        assert_age(found, group, await first_timestamps(bootstrap, topics.input, commits))

        # Without --group: the group is found by its commits on the input topic.
        discovered = await lag(bootstrap, topics)
        assert found.partitions(group).keys() == discovered.partitions(group).keys()
        assert {p: row["lag"] for p, row in found.partitions(group).items()} == {
            p: row["lag"] for p, row in discovered.partitions(group).items()
        }

        # For people: a table with the group, its state, '-' for no owner and the total.
        text = await asyncio.to_thread(
            sensorstream, bootstrap, "lag", "--topic", topics.input, "--group", group
        )
        assert 0 == text.returncode, text.stderr
        assert f"{group} (Empty, 0 members)" in text.stdout
        rows = [line for line in text.stdout.splitlines() if topics.input in line]
        assert PARTITIONS == len(rows), text.stdout
        assert all(line.rstrip(" │|").endswith("-") for line in rows), text.stdout
        assert str(2 * SENSORS * PER_SENSOR) in text.stdout.splitlines()[-2]


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` without joining it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def start_watch(bootstrap: str, *args: str) -> subprocess.Popen[str]:
    """``lag --json --watch --interval 0.5 ARGS``, running."""
    return subprocess.Popen(
        command(bootstrap, "lag", "--json", "--watch", "--interval", "0.5", *args),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def watch_json(bootstrap: str, *args: str, lines: int) -> tuple[int, list[Any]]:
    """Run ``lag --json --watch ARGS`` until it printed ``lines`` lines, then Ctrl-C it:
    its exit status and the documents it printed."""
    proc = start_watch(bootstrap, *args)
    try:
        assert proc.stdout is not None
        printed = [await asyncio.to_thread(proc.stdout.readline) for _ in range(lines)]
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert all(printed), err
    return proc.returncode, [json.loads(line) for line in printed]


class TestLagWatch:
    async def test_watch_json_prints_a_line_per_refresh_and_ctrl_c_exits_with_the_last(
        self, kafka_bootstrap: str
    ) -> None:
        """--json --watch prints one JSON document per line per refresh until Ctrl-C; the
        exit status is --max-lag's verdict on the last refresh."""
        bootstrap = kafka_bootstrap
        topic, group = new_topic_name("cli-lag-watch"), new_topic_name("cli-lag-watch-group")
        await create_topic(bootstrap, topic, 2)
        await produce_readings(bootstrap, topic, sensors=4, per_sensor=5, rate=2000)
        await commit(bootstrap, group, {TopicPartition(topic, p): 0 for p in range(2)})
        total = sum((await end_offsets(bootstrap, topic)).values())
        for max_lag, status in ((0, 1), (total, 0)):
            found, documents = await watch_json(
                bootstrap, "--topic", topic, "--group", group, "--max-lag", str(max_lag), lines=2
            )
            assert status == found
            assert [[(group, total)]] * 2 == [
                [(g["group"], g["lag"]) for g in document["groups"]] for document in documents
            ]
            assert documents[0]["taken_at"] < documents[1]["taken_at"]
