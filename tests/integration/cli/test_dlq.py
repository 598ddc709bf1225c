"""``sensorstream dlq list | show | replay`` against DLQs a real processor filled.

A processor refuses readings mixed with malformed payloads; every number and header the
CLI prints is checked against what was produced and where it landed in the input topic,
read independently. Replays go to fresh topics (or back to the processor) and are read
back with ``read_committed``: each selected letter exactly once, a rerun adds nothing, a
replay killed with SIGKILL and rerun still adds each letter once, and a replayed poison
event comes back with its replay count and is then skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from processor_support import (
    Topics,
    end_offsets,
    make_input,
    produce_readings,
    read_dead_letters,
    start_processor,
    stop_all,
    wait_until,
)

from kafka_helpers import consume_all, create_topic, new_topic_name
from sensorstream.cli._dlq import render_bytes
from sensorstream.schema import DeadLetterHeaders
from sensorstream.schema.testing import malformed_corpus

REPLAYS = DeadLetterHeaders.REPLAYS
PARTITIONS = 3


@dataclass(frozen=True)
class Ran:
    """One ``sensorstream`` run: its exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout.strip(), f"no output (exit {self.returncode}): {self.stderr}"
        return json.loads(self.stdout)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def _command(bootstrap: str, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTREAM_")}
    argv = [sys.executable, "-m", "sensorstream.cli", "--bootstrap-servers", bootstrap, *args]
    return argv, env


async def sensorstream(bootstrap: str, *args: str, **env: str) -> Ran:
    """``python -m sensorstream.cli --bootstrap-servers B ARGS``, no other SENSORSTREAM_*
    set but ``env``; run off the event loop, so the test's clients keep working."""
    argv, full_env = _command(bootstrap, *args)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**full_env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


@dataclass(frozen=True)
class FilledDlq:
    """A DLQ a processor filled, and what went into it."""

    topics: Topics
    reasons: dict[bytes, str]
    """Every refused payload and the reason it was refused for."""

    @property
    def not_json(self) -> list[bytes]:
        return [value for value, reason in self.reasons.items() if reason == "not_json"]


def _small_corpus() -> list[tuple[str, bytes]]:
    """The malformed corpus without its megabyte-sized payloads."""
    return [(reason.value, p) for reason, p in malformed_corpus() if len(p) < 4096]


@pytest.fixture(scope="module")
async def filled(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FilledDlq]:
    """240 readings with 60 poison payloads (not_json) among them, then the small
    malformed corpus (every reason), all through a real processor into its DLQ."""
    topics = Topics.fresh("cli-dlq")
    await make_input(kafka_bootstrap, topics, partitions=PARTITIONS)
    processor = start_processor(kafka_bootstrap, topics, tmp_path_factory.mktemp("dlq"))
    try:
        await processor.wait_ready()
        produced = await produce_readings(
            kafka_bootstrap, topics.input, sensors=4, per_sensor=60, rate=600.0, poison_every=4
        )
        reasons = dict.fromkeys(produced.poison, "not_json")
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i, (reason, payload) in enumerate(_small_corpus()):
                await producer.send_and_wait(topics.input, payload, key=f"bad-{i}".encode())
                reasons[payload] = reason
        finally:
            await producer.stop()
        await wait_until(
            lambda: read_dead_letters(kafka_bootstrap, topics.dlq),
            lambda dead: len(dead) >= len(reasons),
            within=90,
            what=f"{len(reasons)} dead letters in {topics.dlq}",
        )
        await processor.terminate()
        yield FilledDlq(topics, reasons)
    finally:
        stop_all([processor])


async def _input_positions(bootstrap: str, topic: str) -> dict[tuple[int, int], Any]:
    return {(r.partition, r.offset): r for r in await consume_all(bootstrap, topic, timeout=30)}


class TestList:
    async def test_counts_by_reason_match_what_was_refused(
        self, kafka_bootstrap: str, filled: FilledDlq
    ) -> None:
        """Per reason, per original partition and in total: what the processor refused."""
        ran = await sensorstream(
            kafka_bootstrap, "dlq", "list", "--dlq-topic", filled.topics.dlq, "--json"
        )
        listed = ran.json()

        refused_at = Counter(
            r.partition
            for r in (await _input_positions(kafka_bootstrap, filled.topics.input)).values()
            if r.value in filled.reasons
        )
        assert (0, len(filled.reasons), Counter(filled.reasons.values())) == (
            ran.returncode,
            listed["total"],
            Counter(listed["by_reason"]),
        )
        assert [
            {"topic": filled.topics.input, "partition": p, "count": n}
            for p, n in sorted(refused_at.items())
        ] == listed["by_origin"]
        assert (3600.0, len(filled.reasons)) == (
            listed["bucket_seconds"],
            sum(b["count"] for b in listed["by_bucket"]),
        )

    async def test_filters(self, kafka_bootstrap: str, filled: FilledDlq) -> None:
        """--reason (repeatable), --sensor, --since / --until select; 1 s buckets split."""
        dlq = ("dlq", "list", "--dlq-topic", filled.topics.dlq, "--json")
        reasons, sensor, future, past, recent = await asyncio.gather(
            sensorstream(kafka_bootstrap, *dlq, "--reason", "empty", "--reason", "not_object"),
            sensorstream(kafka_bootstrap, *dlq, "--sensor", "bad-0"),
            sensorstream(kafka_bootstrap, *dlq, "--since", "2999-01-01T00:00:00Z"),
            sensorstream(kafka_bootstrap, *dlq, "--until", "2000-01-01"),
            sensorstream(kafka_bootstrap, *dlq, "--since", "1h", "--bucket", "1s"),
        )

        expected = Counter(r for r in filled.reasons.values() if r in ("empty", "not_object"))
        assert (expected, 1, 0, 0) == (
            Counter(reasons.json()["by_reason"]),
            sensor.json()["total"],
            future.json()["total"],
            past.json()["total"],
        )
        dead_lettered_at = Counter(
            r.timestamp // 1000 * 1000
            for r in await consume_all(kafka_bootstrap, filled.topics.dlq, timeout=30)
        )
        assert dead_lettered_at == {b["start_ms"]: b["count"] for b in recent.json()["by_bucket"]}

    async def test_table_for_people(self, kafka_bootstrap: str, filled: FilledDlq) -> None:
        """Without --json: the total and a table row per reason."""
        ran = await sensorstream(kafka_bootstrap, "dlq", "list", "--dlq-topic", filled.topics.dlq)

        assert 0 == ran.returncode, ran.stderr
        assert f"{len(filled.reasons)} dead letters in {filled.topics.dlq}" in ran.stdout
        assert all(reason in ran.stdout for reason in set(filled.reasons.values()))


class TestShow:
    async def test_headers_decoded_point_at_the_refused_record(
        self, kafka_bootstrap: str, filled: FilledDlq
    ) -> None:
        """Each letter's original topic/partition/offset holds its value and key in the
        input; reason, instance and replay count 0 are decoded; values are whole."""
        ran = await sensorstream(
            kafka_bootstrap, "dlq", "show", "--dlq-topic", filled.topics.dlq,
            "--json", "--limit", "0", "--max-bytes", "5000",
        )  # fmt: skip
        shown = ran.json_lines()
        inputs = await _input_positions(kafka_bootstrap, filled.topics.input)

        assert (0, len(filled.reasons)) == (ran.returncode, len(shown))
        problems = []
        for letter in shown:
            origin = letter["original"]
            record = inputs[(origin["partition"], origin["offset"])]
            expected = (
                filled.topics.input,
                filled.reasons[record.value],
                render_bytes(record.value, 5000)[0],
                record.key.decode(),
                record.timestamp,
                0,
                False,
            )
            actual = (
                origin["topic"],
                letter["reason"],
                letter["value"],
                letter["key"],
                origin["timestamp_ms"],
                letter["replays"],
                letter["value_truncated"],
            )
            if expected != actual or not letter["instance"] or not letter["error"]:
                problems.append((expected, actual, letter))
        assert [] == problems
        times = [letter["timestamp_ms"] for letter in shown]
        assert sorted(times) == times  # oldest first

    async def test_limit_max_bytes_and_escapes(
        self, kafka_bootstrap: str, filled: FilledDlq
    ) -> None:
        """--limit N shows the N oldest; --max-bytes cuts values; non-UTF-8 is escaped."""
        dlq = ("dlq", "show", "--dlq-topic", filled.topics.dlq, "--json")
        ran = await asyncio.gather(
            sensorstream(kafka_bootstrap, *dlq, "--limit", "5", "--max-bytes", "4"),
            sensorstream(kafka_bootstrap, *dlq, "--limit", "0"),
            sensorstream(kafka_bootstrap, *dlq, "--reason", "invalid_utf8", "--limit", "0"),
        )
        first, every, binary = (r.json_lines() for r in ran)

        assert [(x["partition"], x["offset"]) for x in every[:5]] == [
            (x["partition"], x["offset"]) for x in first
        ]
        # The five oldest are poison payloads, all UTF-8 and longer than 4 bytes.
        assert [(x["value"][:4], True) for x in every[:5]] == [
            (x["value"], x["value_truncated"]) for x in first
        ]
        invalid = sum(1 for reason in filled.reasons.values() if reason == "invalid_utf8")
        assert (invalid, True) == (len(binary), all(x["value_escaped"] for x in binary))

    async def test_text_for_people(self, kafka_bootstrap: str, filled: FilledDlq) -> None:
        """Without --json: each letter with its reason, origin, key and value."""
        ran = await sensorstream(
            kafka_bootstrap, "dlq", "show", "--dlq-topic", filled.topics.dlq, "--sensor", "bad-0"
        )

        assert 0 == ran.returncode, ran.stderr
        assert "from:   " + filled.topics.input in ran.stdout
        assert "key:    bad-0" in ran.stdout


async def _target(bootstrap: str, prefix: str) -> str:
    topic = new_topic_name(prefix)
    await create_topic(bootstrap, topic, PARTITIONS)
    return topic


async def _replayed(bootstrap: str, topic: str) -> list[Any]:
    return await consume_all(bootstrap, topic, isolation_level="read_committed", timeout=30)


class TestReplay:
    async def test_each_selected_letter_once_and_a_rerun_adds_nothing(
        self, kafka_bootstrap: str, filled: FilledDlq
    ) -> None:
        """A dry run produces and commits nothing; the replay puts every not_json letter's
        original key and value in the target once, marked as replay 1; a rerun with the
        same group finds nothing new; --rate bounds the pace."""
        target = await _target(kafka_bootstrap, "cli-dlq-fixed")
        group = new_topic_name("cli-dlq-replay")
        replay = (
            "dlq", "replay", "--dlq-topic", filled.topics.dlq, "--to", target,
            "--group", group, "--reason", "not_json", "--json",
        )  # fmt: skip
        dry = await sensorstream(kafka_bootstrap, *replay, "--dry-run")
        assert (0, len(filled.not_json), {"not_json": len(filled.not_json)}, 0) == (
            dry.returncode,
            dry.json()["replayed"],
            dry.json()["replayed_by_reason"],
            sum((await end_offsets(kafka_bootstrap, target)).values()),
        )

        first = await sensorstream(kafka_bootstrap, *replay, "--rate", "200")
        again = await sensorstream(kafka_bootstrap, *replay)
        records = await _replayed(kafka_bootstrap, target)

        assert (0, len(filled.not_json), len(filled.reasons)) == (
            first.returncode,
            first.json()["replayed"],
            first.json()["examined"],
        ), first.stderr
        assert Counter(filled.not_json) == Counter(r.value for r in records)
        keys = {r.value: r.key for r in await consume_all(kafka_bootstrap, filled.topics.dlq)}
        assert [] == [r for r in records if r.key != keys[r.value]]
        assert [] == [r for r in records if list(r.headers) != [(REPLAYS, b"1")]]
        assert 50 < first.json()["rate"] <= 200 * 1.1
        assert (0, 0, 0) == (again.returncode, again.json()["replayed"], again.json()["examined"])
        assert len(records) == len(await _replayed(kafka_bootstrap, target))

    async def test_killed_mid_transaction_then_rerun_puts_each_letter_once(
        self, kafka_bootstrap: str, filled: FilledDlq
    ) -> None:
        """SIGKILL during a slow replay, with a batch in flight, then the same command
        again: the rerun aborts the killed run's transaction and resumes after its last
        commit, so a read_committed reader finds every selected letter exactly once (and
        the aborted batch is in the log, for read_uncommitted readers only)."""
        target = await _target(kafka_bootstrap, "cli-dlq-kill")
        replay = (
            "dlq", "replay", "--dlq-topic", filled.topics.dlq, "--to", target,
            "--group", new_topic_name("cli-dlq-kill"), "--reason", "not_json", "--json",
        )  # fmt: skip
        argv, env = _command(kafka_bootstrap, *replay, "--rate", "20")
        slow = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            committed, logged = await _kill_in_flight(kafka_bootstrap, target, slow)
        finally:
            if slow.returncode is None:
                slow.kill()
                await slow.wait()
        rerun = await sensorstream(kafka_bootstrap, *replay, "--rate", "0")
        records = await _replayed(kafka_bootstrap, target)
        everything = await consume_all(kafka_bootstrap, target, timeout=30)

        assert (-signal.SIGKILL, True, True) == (
            slow.returncode,
            0 < committed < len(filled.not_json),
            committed < logged,
        )
        assert (0, len(filled.not_json) - committed) == (
            rerun.returncode,
            rerun.json()["replayed"],
        ), rerun.stderr
        assert Counter(filled.not_json) == Counter(r.value for r in records)
        assert len(records) + (logged - committed) == len(everything)


async def _in_target(bootstrap: str, topic: str) -> tuple[int, int]:
    """Records in ``topic`` for a read_committed reader, and in the log."""
    committed = await _replayed(bootstrap, topic)
    return len(committed), len(await consume_all(bootstrap, topic, timeout=30))


async def _kill_in_flight(
    bootstrap: str, topic: str, replay: asyncio.subprocess.Process, *, within: float = 60.0
) -> tuple[int, int]:
    """SIGKILL ``replay`` once it has committed a batch and holds records of the next one
    in an open transaction; the counts of ``_in_target`` at the kill. The process is
    stopped (SIGSTOP) to look, so it cannot commit between the look and the kill."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        committed, logged = await _in_target(bootstrap, topic)
        if committed and logged > committed:
            replay.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.5)  # a commit sent just before the stop lands by now
            committed, logged = await _in_target(bootstrap, topic)
            if logged > committed:
                replay.send_signal(signal.SIGKILL)
                await replay.wait()
                return committed, logged
            replay.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no committed replay batch and an open one within {within:g} s")


class TestFailsAgain:
    async def test_a_replayed_poison_event_returns_with_its_count_then_is_skipped(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Poison replayed into a running processor's input is dead-lettered again with
        replay count 1; a replay with --max-replays 1 skips those, produces nothing and
        exits 1; the next run has nothing left to do."""
        topics = Topics.fresh("cli-dlq-again")
        await make_input(kafka_bootstrap, topics, partitions=PARTITIONS)
        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        try:
            await processor.wait_ready()
            produced = await produce_readings(
                kafka_bootstrap, topics.input, sensors=3, per_sensor=20, rate=300.0, poison_every=10
            )
            poison = len(produced.poison)
            await wait_until(
                lambda: read_dead_letters(kafka_bootstrap, topics.dlq),
                lambda dead: len(dead) >= poison,
                within=60,
                what=f"{poison} dead letters",
            )
            replay = (
                "dlq", "replay", "--dlq-topic", topics.dlq, "--topic", topics.input,
                "--group", new_topic_name("cli-dlq-again"), "--json",
            )  # fmt: skip
            first = await sensorstream(kafka_bootstrap, *replay)
            await wait_until(
                lambda: read_dead_letters(kafka_bootstrap, topics.dlq),
                lambda dead: len(dead) >= 2 * poison,
                within=60,
                what=f"{poison} letters of the replayed poison",
            )
            shown = (
                await sensorstream(
                    kafka_bootstrap,
                    "dlq",
                    "show",
                    "--dlq-topic",
                    topics.dlq,
                    "--json",
                    "--limit",
                    "0",
                )
            ).json_lines()
            input_ends = await end_offsets(kafka_bootstrap, topics.input)
            skipping = await sensorstream(kafka_bootstrap, *replay, "--max-replays", "1")
            after = await sensorstream(kafka_bootstrap, *replay, "--max-replays", "1")
            inputs = await _input_positions(kafka_bootstrap, topics.input)
        finally:
            stop_all([processor])

        assert (0, poison) == (first.returncode, first.json()["replayed"]), first.stderr
        assert Counter({0: poison, 1: poison}) == Counter(x["replays"] for x in shown)
        again = [x for x in shown if x["replays"] == 1]
        # Each new letter is of a replayed record: in the input after the replay, marked 1.
        assert [[(REPLAYS, b"1")]] * poison == [
            list(inputs[(x["original"]["partition"], x["original"]["offset"])].headers)
            for x in again
        ]
        assert Counter(p.decode() for p in produced.poison) == Counter(x["value"] for x in again)
        assert (1, 0, {"max_replays": poison}) == (
            skipping.returncode,
            skipping.json()["replayed"],
            skipping.json()["skipped"],
        ), skipping.stderr
        assert input_ends == await end_offsets(kafka_bootstrap, topics.input)
        assert (0, 0, 0) == (after.returncode, after.json()["examined"], after.json()["replayed"])


class TestExitStatus:
    async def test_unreachable_kafka_exits_3(self) -> None:
        """Nothing listening: one line naming the servers and the setting, exit 3."""
        list_ = await sensorstream("127.0.0.1:9", "dlq", "list", SENSORSTREAM_STARTUP_TIMEOUT="1")
        replay = await sensorstream(
            "127.0.0.1:9", "dlq", "replay", "--dry-run", SENSORSTREAM_STARTUP_TIMEOUT="1"
        )

        for ran in (list_, replay):
            last = ran.stderr.strip().splitlines()[-1]
            assert (3, True, True) == (
                ran.returncode,
                last.startswith("sensorstream: error: cannot reach Kafka at 127.0.0.1:9"),
                "SENSORSTREAM_BOOTSTRAP_SERVERS" in last,
            ), ran.stderr

    async def test_a_topic_that_does_not_exist_exits_2(self, kafka_bootstrap: str) -> None:
        """A wrong --dlq-topic (or --to) is a bad option, said in one line; nothing is created."""
        missing = new_topic_name("cli-dlq-missing")
        ran = await sensorstream(kafka_bootstrap, "dlq", "list", "--dlq-topic", missing)
        to = await sensorstream(
            kafka_bootstrap, "dlq", "replay", "--dlq-topic", missing, "--to", "sensor-data"
        )

        assert (2, 2) == (ran.returncode, to.returncode)
        assert f"topic {missing!r} does not exist" in ran.stderr
