"""sensorstream-audit against a real pipeline: it passes a clean run and finds what a
deliberate deletion from the aggregates topic lost, by sensor and seq."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from processor_support import (
    Topics,
    free_port,
    make_input,
    produce_readings,
    start_processor,
    stop_all,
)

from kafka_helpers import consume_all
from sensorstream.audit import AuditReport, AuditTopics, SeqRanges, audit_pipeline
from sensorstream.schema import decode_aggregate


def audit_topics(topics: Topics) -> AuditTopics:
    return AuditTopics(input=topics.input, aggregates=topics.aggregates, dlq=topics.dlq)


def audit_env(bootstrap: str, topics: Topics) -> dict[str, str]:
    return {
        **os.environ,
        "SENSORSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "SENSORSTREAM_TOPIC": topics.input,
        "SENSORSTREAM_AGGREGATES_TOPIC": topics.aggregates,
        "SENSORSTREAM_DLQ_TOPIC": topics.dlq,
        "SENSORSTREAM_LOG_LEVEL": "error",
    }


def run_audit(bootstrap: str, topics: Topics, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sensorstream.audit", *args],
        env=audit_env(bootstrap, topics),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def audited(bootstrap: str, topics: Topics, produced: int, within: float) -> AuditReport:
    """The audit once every produced reading is accounted for (or after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        report = await audit_pipeline(bootstrap, audit_topics(topics))
        if (report.ok and report.totals.aggregated == produced) or time.monotonic() > deadline:
            return report
        await asyncio.sleep(1.0)


async def test_the_audit_finds_the_readings_of_deleted_aggregates(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A clean run audits OK (exit 0); after deleting the first aggregates of one
    partition, exactly their readings are missing, named by sensor and seq (exit 1)."""
    topics = Topics.fresh("audit")
    await make_input(kafka_bootstrap, topics)
    processor = start_processor(kafka_bootstrap, topics, tmp_path)
    try:
        await processor.wait_ready()
        produced = await produce_readings(
            kafka_bootstrap, topics.input, sensors=6, per_sensor=150, rate=3000, poison_every=300
        )
        sent = produced.readings
        report = await audited(kafka_bootstrap, topics, sent, within=60)
        assert report.ok, report.totals
        assert (sent, sent, 0) == (
            report.totals.produced,
            report.totals.aggregated,
            report.totals.missing,
        )
        assert len(produced.poison) == report.totals.undecodable == report.totals.dead_lettered
    finally:
        stop_all([processor])

    clean = run_audit(kafka_bootstrap, topics, "--json")
    assert 0 == clean.returncode, clean.stderr
    assert 0 == json.loads(clean.stdout)["totals"]["missing"]

    partition = TopicPartition(topics.aggregates, 0)
    records = await consume_all(kafka_bootstrap, topics.aggregates, timeout=20)
    doomed = [decode_aggregate(r.value) for r in records if r.partition == 0][:3]
    assert 3 == len(doomed)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records({partition: RecordsToDelete(before_offset=3)})
    finally:
        await admin.close()

    broken = run_audit(kafka_bootstrap, topics, "--json")

    assert 1 == broken.returncode, broken.stderr
    found = json.loads(broken.stdout)
    assert sum(agg.count for agg in doomed) == found["totals"]["missing"]
    expected: dict[str, SeqRanges] = defaultdict(SeqRanges)
    for agg in doomed:
        assert agg.first_seq is not None
        assert agg.last_seq is not None
        expected[agg.sensor_id].add(agg.first_seq, agg.last_seq)
    assert {sensor: [list(r) for r in seqs.ranges()] for sensor, seqs in expected.items()} == {
        s["sensor_id"]: s["missing_seqs"] for s in found["sensors"]
    }
    table = run_audit(kafka_bootstrap, topics)
    assert 1 == table.returncode
    assert "PROBLEMS FOUND" in table.stdout
    assert doomed[0].sensor_id in table.stdout


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        body = resp.read().decode()
    samples = {}
    for line in body.splitlines():
        if line.startswith("sensorstream_audit_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def wait_for_sample(port: int, name: str, ok: object, within: float) -> dict[str, float]:
    deadline = time.monotonic() + within
    while True:
        try:
            samples = await asyncio.to_thread(scrape, port)
        except OSError:
            samples = {}
        if (name in samples and ok(samples[name])) or time.monotonic() > deadline:  # type: ignore[operator]
            return samples
        await asyncio.sleep(0.5)


async def test_follow_exports_missing_readings_until_they_arrive(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """--follow: readings no processor handles show as missing on /metrics after the
    grace period; once a processor runs, missing falls back to 0."""
    topics = Topics.fresh("follow")
    await make_input(kafka_bootstrap, topics)
    # The processor creates its output topics; run it once before the audit starts.
    processor = start_processor(kafka_bootstrap, topics, tmp_path)
    await processor.wait_ready()
    stop_all([processor])
    port = free_port()
    follower = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
        [sys.executable, "-m", "sensorstream.audit", "--follow", "--interval", "0.5"],
        env={
            **audit_env(kafka_bootstrap, topics),
            "SENSORSTREAM_METRICS_PORT": str(port),
            "SENSORSTREAM_GRACE": "2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processor = None
    try:
        sent = (
            await produce_readings(
                kafka_bootstrap, topics.input, sensors=4, per_sensor=50, rate=2000
            )
        ).readings
        missing = 'sensorstream_audit_readings{state="missing"}'
        samples = await wait_for_sample(port, missing, lambda v: v == sent, within=30)
        assert sent == samples[missing]
        assert sent == samples['sensorstream_audit_readings{state="produced"}']

        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        samples = await wait_for_sample(port, missing, lambda v: v == 0, within=60)

        assert 0 == samples[missing]
        assert sent == samples['sensorstream_audit_readings{state="aggregated"}']
        assert 0 == samples['sensorstream_audit_readings{state="duplicated"}']
    finally:
        follower.terminate()
        assert 0 == follower.wait(20)
        if processor is not None:
            stop_all([processor])
