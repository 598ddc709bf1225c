"""Simulated devices -> Mosquitto -> bridge -> Kafka -> processor -> aggregates, for real.

One run (``clean_run``) feeds the whole pipeline with readings and bad payloads; the tests
read what it left: every seq of every sensor accounted for by the audit, the bad payloads
in the DLQ with the processor's reasons and headers plus the MQTT topic, and the bridge's
counters agreeing with both.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from bridge_support import (
    Bridge,
    BridgeTarget,
    Devices,
    input_seqs,
    start_bridge,
    start_devices,
    wait_for_input,
)
from processor_support import (
    SeqLedger,
    Topics,
    make_input,
    settled_ledger,
    start_processor,
    stop_all,
    wait_until,
)

from conftest import Mosquitto
from kafka_helpers import consume_all
from sensorstream.bridge import MQTT_TOPIC_HEADER
from sensorstream.bridge._devices import POISON_KINDS
from sensorstream.schema import DeadLetterHeaders

if TYPE_CHECKING:
    from conftest import Mosquitto

SENSORS = 20
PER_SENSOR = 150
READINGS = SENSORS * PER_SENSOR
POISON_EVERY = 100
POISON = READINGS // POISON_EVERY


@dataclass
class CleanRun:
    topics: Topics
    target: BridgeTarget
    bridge: Bridge
    devices: dict[str, object]
    ledger: SeqLedger
    metrics: dict[str, float]


@pytest_asyncio.fixture(scope="module")
async def clean_run(
    kafka_bootstrap: str, module_mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CleanRun]:
    """Readings and bad payloads through the whole pipeline, once, until all settled."""
    mosquitto = module_mosquitto
    tmp_path = tmp_path_factory.mktemp("clean-run")
    topics = Topics.fresh("bridge")
    await make_input(kafka_bootstrap, topics)
    target = BridgeTarget.fresh(kafka_bootstrap, mosquitto.port, topic=topics.input, dlq=topics.dlq)
    bridge = start_bridge(target, tmp_path)
    processor = start_processor(kafka_bootstrap, topics, tmp_path)
    devices: Devices | None = None
    try:
        await bridge.wait_ready()
        await processor.wait_ready()
        devices = start_devices(
            target, tmp_path, sensors=SENSORS, count=READINGS, rate=1500, poison_every=POISON_EVERY
        )
        final = await devices.wait()
        await wait_for_input(kafka_bootstrap, topics.input, READINGS)
        ledger = await settled_ledger(kafka_bootstrap, topics, within=60)
        metrics = {
            name: await bridge.metric_async(f"sensorstream_bridge_{name}")
            for name in (
                "messages_received_total",
                "records_produced_total",
                "dead_letters_total",
                "messages_acked_total",
                "duplicates_dropped_total",
                "acks_abandoned_total",
            )
        }
        yield CleanRun(topics, target, bridge, final, ledger, metrics)
    finally:
        if devices is not None:
            devices.stop()
        stop_all([processor])
        if bridge.proc.poll() is None:
            bridge.kill()


class TestCleanRun:
    async def test_every_seq_of_every_sensor_is_accounted_for(self, clean_run: CleanRun) -> None:
        """The audit finds each reading the devices sent in exactly one aggregate."""
        ledger = clean_run.ledger
        assert {} == ledger.problems()
        assert READINGS == ledger.report.totals.produced
        assert {f"sensor-{i:04d}": set(range(PER_SENSOR)) for i in range(SENSORS)} == (
            ledger.produced
        )
        assert {} == ledger.reordered()
        assert READINGS == clean_run.devices["readings"]

    async def test_bad_payloads_are_dead_lettered_with_reason_and_mqtt_topic(
        self, kafka_bootstrap: str, clean_run: CleanRun
    ) -> None:
        """Each bad payload is in the DLQ once, with the decoder's reason, the dead-letter
        headers filled as docs/bridge.md says, and the MQTT topic it came on."""
        records = await consume_all(kafka_bootstrap, clean_run.topics.dlq, timeout=30)
        assert POISON == clean_run.devices["poison"] == len(records)
        expected = Counter(POISON_KINDS[i % len(POISON_KINDS)][0] for i in range(POISON))
        reasons: Counter[str] = Counter()
        for record in records:
            headers = DeadLetterHeaders.from_kafka_headers(record.headers)
            mqtt_topic = dict(record.headers)[MQTT_TOPIC_HEADER].decode()
            assert mqtt_topic.startswith(f"{clean_run.target.prefix}/sensor-")
            assert mqtt_topic.endswith("/readings")
            assert (f"mqtt:{mqtt_topic}", -1, -1, clean_run.bridge.instance) == (
                headers.original_topic,
                headers.original_partition,
                headers.original_offset,
                headers.instance,
            )
            assert record.key is None
            reasons[headers.reason.value] += 1
        assert expected == reasons
        # The bad payloads never reached the input topic, so the processor had none.
        assert 0 == (await input_seqs(kafka_bootstrap, clean_run.topics.input)).undecodable

    async def test_the_bridge_counts_agree(self, clean_run: CleanRun) -> None:
        """Received = acknowledged = produced + dead-lettered; nothing dropped or abandoned."""
        metrics = clean_run.metrics
        assert {
            "messages_received_total": READINGS + POISON,
            "records_produced_total": READINGS,
            "dead_letters_total": POISON,
            "messages_acked_total": READINGS + POISON,
            "duplicates_dropped_total": 0,
            "acks_abandoned_total": 0,
        } == metrics


class TestShutdown:
    @pytest.mark.parametrize("protocol", ["3.1.1", "5"])
    async def test_sigterm_drains_and_the_next_bridge_continues(
        self, kafka_bootstrap: str, mosquitto: Mosquitto, tmp_path: Path, protocol: str
    ) -> None:
        """SIGTERM mid-stream: the bridge acks what Kafka has, exits 0; what it had not read
        and what is published while no bridge runs wait on the broker for the next bridge
        (MQTT 3.1.1 and 5 sessions alike), which loses and repeats nothing."""
        topics = Topics.fresh("bridge-term")
        await make_input(kafka_bootstrap, topics)
        target = BridgeTarget.fresh(
            kafka_bootstrap, mosquitto.port, topic=topics.input, dlq=topics.dlq
        )
        env = {"SENSORSTREAM_MQTT_PROTOCOL": protocol}
        first = start_bridge(target, tmp_path, **env)
        await first.wait_ready()
        devices = start_devices(target, tmp_path, sensors=10, count=6000, rate=1500)
        try:
            await wait_until(
                lambda: first.metric_async("sensorstream_bridge_messages_acked_total"),
                lambda acked: acked >= 1500,
                within=60,
                what="the first bridge acknowledging 1,500 messages",
            )
            assert 0 == await first.terminate()
            [stopped] = first.events("bridge_stopped")
            assert stopped["acked"] == stopped["received"] > 0
            await asyncio.sleep(1.0)  # no bridge: the broker queues for the session
            second = start_bridge(target, tmp_path, **env)
            await second.wait_ready()
            await devices.wait()
            seqs = await wait_for_input(kafka_bootstrap, topics.input, 6000)
            assert 0 == await second.terminate()
        finally:
            devices.stop()
        assert {} == seqs.problems(10, 600)
