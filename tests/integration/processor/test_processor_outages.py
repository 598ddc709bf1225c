"""The whole pipeline through broker faults: an outage longer than the idle timeout on a
single broker, and repeated hard leader failovers on a three-broker cluster.

Both run our real producer and processor as subprocesses against brokers of the test's
own (``outage_kafka``, ``failover_cluster``), then check the per-sensor ``seq``
accounting (:class:`processor_support.SeqLedger`): the producer delivered every
generated seq of every sensor exactly once and in order, and every one of them is in
exactly one aggregate — no window closed because the broker was away, so no reading
arrived late and vanished.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from processor_support import (
    Processor,
    SeqLedger,
    Topics,
    committed_offsets,
    end_offsets,
    free_port,
    settled_ledger,
    start_processor,
    stop_all,
    wait_for_commits,
    wait_until,
)

from kafka_helpers import create_topic

if TYPE_CHECKING:
    from conftest import FailoverCluster, OutageKafka

SENSORS = 12
CONSUMED = "sensorstream_processor_events_consumed_total"


def start_producer(
    bootstrap: str, topic: str, tmp_path: Path, *argv: str
) -> subprocess.Popen[bytes]:
    """``sensorstream-producer`` writing its JSON log to ``tmp_path/producer.log``."""
    with open(tmp_path / "producer.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sensorstream.producer",
                "--bootstrap-servers",
                bootstrap,
                "--topic",
                topic,
                "--sensors",
                str(SENSORS),
                "--metrics-port",
                str(free_port()),
                "--log-format",
                "json",
                "--shutdown-timeout",
                "60",
                *argv,
            ],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def consumed_more(processor: Processor, *, than: float, by: int, within: float) -> None:
    """Wait until ``processor`` has consumed ``by`` more records than ``than``."""
    await wait_until(
        lambda: processor.metric_async(CONSUMED),
        lambda consumed: consumed >= than + by,
        within=within,
        what=f"{by} more records consumed than {than:g}",
    )


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int:
    return await asyncio.to_thread(proc.wait, within)


def input_is_exact(ledger: SeqLedger, produced: int) -> dict[str, str]:
    """Per sensor, what is wrong with its seqs in the input topic (empty: 0..N-1 each once)."""
    problems = {}
    total = 0
    for sensor, seqs in sorted(ledger.produced.items()):
        total += len(seqs)
        top = max(seqs)
        missing = sorted(set(range(top + 1)) - seqs)
        if missing:
            problems[sensor] = f"missing seqs {missing[:10]} (of 0..{top})"
    for sensor, pairs in ledger.reordered().items():
        problems[f"{sensor} order"] = f"stored out of order: {pairs}"
    if total != produced:
        problems["total"] = f"{total} readings in the topic, the producer acknowledged {produced}"
    return problems


def acked(log: Path) -> int:
    """The producer's final count of acknowledged readings, from its producer_stopped line."""
    import orjson

    for line in reversed(log.read_text().splitlines()):
        if '"producer_stopped"' in line:
            return int(orjson.loads(line)["acked"])
    raise AssertionError(f"no producer_stopped line in {log}:\n{log.read_text()[-2000:]}")


class TestBrokerOutage:
    async def test_an_outage_longer_than_the_idle_timeout_loses_nothing(
        self, outage_kafka: OutageKafka, tmp_path: Path
    ) -> None:
        """The broker is down for 45 s (idle timeout 5 s, client request timeout 40 s)
        under live traffic: the producer keeps every reading and delivers it once; the
        processor closes no window for the outage, so every reading is aggregated."""
        bootstrap = outage_kafka.bootstrap
        topics = Topics.fresh("outage")
        await create_topic(bootstrap, topics.input, 3)
        processor = start_processor(bootstrap, topics, tmp_path)
        processes: list[Processor] = [processor]
        producer = start_producer(bootstrap, topics.input, tmp_path, "--rate", "300")
        try:
            await processor.wait_ready()
            # The outage hits a processor with committed work and windows open.
            await wait_for_commits(bootstrap, topics, partitions=3)
            before = await processor.metric_async(CONSUMED)
            await outage_kafka.stop_async(hard=True)
            await asyncio.sleep(45.0)
            assert processor.proc.poll() is None, processor.logs()[-3000:]
            await outage_kafka.start_async()
            # The producer catches up and the processor works through it.
            await consumed_more(processor, than=before, by=3000, within=90)
            producer.send_signal(signal.SIGTERM)
            assert 0 == await wait_exit(producer, 90)
            ledger = await settled_ledger(bootstrap, topics, within=60)
            assert {} == input_is_exact(ledger, acked(tmp_path / "producer.log"))
            assert {} == ledger.problems()
            assert {} == ledger.dead_lettered
            # Commits resume after the outage: the group commits the whole input, not
            # just what it had committed before the broker went away.
            ends = await end_offsets(bootstrap, topics.input)
            await wait_until(
                lambda: committed_offsets(bootstrap, topics),
                lambda offsets: all(offsets.get(p, (-1, ""))[0] == end for p, end in ends.items()),
                within=60,
                what=f"commits up to the input's end {ends} after the outage",
            )
            assert 0 == await processor.terminate()
        finally:
            if producer.poll() is None:
                producer.kill()
            stop_all(processes)


@pytest.mark.cluster
class TestLeaderFailover:
    async def test_three_hard_leader_bounces_lose_nothing(
        self, failover_cluster: FailoverCluster, tmp_path: Path
    ) -> None:
        """On three brokers (RF 3, min ISR 2) the leader of a partition is killed -9 three
        times under 1,000 ev/s and brought back: every reading is delivered once and
        aggregated once; no window closed while the partition had no leader."""
        bootstrap = failover_cluster.bootstrap
        topics = Topics.fresh("failover")
        await create_topic(
            bootstrap, topics.input, 3, replication_factor=3, config={"min.insync.replicas": "2"}
        )
        processor = start_processor(
            bootstrap, topics, tmp_path, SENSORSTREAM_REPLICATION_FACTOR="3"
        )
        producer = start_producer(
            bootstrap, topics.input, tmp_path, "--rate", "1000", "--replication-factor", "3"
        )
        try:
            await processor.wait_ready()
            await wait_for_commits(bootstrap, topics, partitions=3)
            for _ in range(3):
                leader = await failover_cluster.leader_of(topics.input, 0)
                await failover_cluster.stop_node_async(leader, hard=True)
                await asyncio.sleep(6.0)  # the partition's old leader stays away this long
                await failover_cluster.start_node_async(leader)
                back = await processor.metric_async(CONSUMED)
                # Traffic flows through the processor again before the next bounce.
                await consumed_more(processor, than=back, by=2000, within=60)
            producer.send_signal(signal.SIGTERM)
            assert 0 == await wait_exit(producer, 90)
            ledger = await settled_ledger(bootstrap, topics, within=60)
            assert {} == input_is_exact(ledger, acked(tmp_path / "producer.log"))
            assert {} == ledger.problems()
            assert {} == ledger.dead_lettered
            assert processor.proc.poll() is None
        finally:
            if producer.poll() is None:
                producer.kill()
            stop_all([processor])
