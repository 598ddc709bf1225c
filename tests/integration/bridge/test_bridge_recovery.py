"""The bridge through crashes and outages, against real Mosquitto, Kafka and processor:
``kill -9`` of the bridge, Mosquitto restarted under load, Kafka away for a while, and an
MQTT broker that wants a password."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridge_support import (
    BridgeTarget,
    start_bridge,
    start_devices,
    unique,
    wait_for_input,
)
from processor_support import (
    Topics,
    make_input,
    settled_ledger,
    start_processor,
    stop_all,
    wait_until,
)

if TYPE_CHECKING:
    from conftest import Mosquitto, OutageKafka


class TestBridgeCrash:
    async def test_kill_9_mid_stream_loses_and_repeats_nothing(
        self, kafka_bootstrap: str, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """SIGKILL while messages flow, restart 1.5 s later: every seq of every sensor is in
        the input topic exactly once and in order (what the dead bridge forwarded but never
        acknowledged comes again and is recognised), and the audit of the processor's
        aggregates finds each reading counted once."""
        sensors, per_sensor = 30, 300
        topics = Topics.fresh("bridge-kill")
        await make_input(kafka_bootstrap, topics)
        target = BridgeTarget.fresh(
            kafka_bootstrap, mosquitto.port, topic=topics.input, dlq=topics.dlq
        )
        first = start_bridge(target, tmp_path)
        processor = start_processor(kafka_bootstrap, topics, tmp_path)
        second = None
        devices = None
        try:
            await first.wait_ready()
            await processor.wait_ready()
            devices = start_devices(
                target, tmp_path, sensors=sensors, count=sensors * per_sensor, rate=2000
            )
            await wait_until(
                lambda: first.metric_async("sensorstream_bridge_messages_acked_total"),
                lambda acked: acked >= 2000,
                within=60,
                what="the first bridge acknowledging 2,000 messages",
            )
            first.kill()
            await asyncio.sleep(1.5)  # the devices go on publishing: the broker queues it
            second = start_bridge(target, tmp_path)
            await second.wait_ready()
            await devices.wait()
            seqs = await wait_for_input(kafka_bootstrap, topics.input, sensors * per_sensor)
            ledger = await settled_ledger(kafka_bootstrap, topics, within=60)
            dropped = await second.metric_async("sensorstream_bridge_duplicates_dropped_total")
            print(f"redeliveries recognised after kill -9: {dropped:g}")
        finally:
            if devices is not None:
                devices.stop()
            stop_all([processor])
            for bridge in (first, second):
                if bridge is not None and bridge.proc.poll() is None:
                    bridge.kill()
        assert {} == seqs.problems(sensors, per_sensor)
        assert 0 == seqs.duplicates()
        assert {} == ledger.problems()
        assert sensors * per_sensor == ledger.report.totals.produced
        assert 0 == ledger.report.totals.input_duplicates


class TestMosquittoRestart:
    async def test_restart_under_load_loses_nothing(
        self, kafka_bootstrap: str, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Mosquitto stopped (cleanly: it saves its sessions) and started again while devices
        publish and the bridge forwards: both reconnect, and every seq reaches the input
        topic once and in order."""
        sensors, per_sensor = 20, 300
        target = BridgeTarget.fresh(
            kafka_bootstrap, mosquitto.port, topic=unique("mqtt-restart-in"), dlq=unique("dlq")
        )
        bridge = start_bridge(target, tmp_path)
        devices = None
        try:
            await bridge.wait_ready()
            devices = start_devices(
                target, tmp_path, sensors=sensors, count=sensors * per_sensor, rate=1500
            )
            await wait_until(
                lambda: bridge.metric_async("sensorstream_bridge_messages_acked_total"),
                lambda acked: acked >= 1000,
                within=60,
                what="the bridge acknowledging 1,000 messages",
            )
            await mosquitto.restart_async()
            final = await devices.wait()
            seqs = await wait_for_input(kafka_bootstrap, target.topic, sensors * per_sensor)
            reconnects = await bridge.metric_async("sensorstream_bridge_mqtt_reconnects_total")
            assert 0 == await bridge.terminate()
        finally:
            if devices is not None:
                devices.stop()
            if bridge.proc.poll() is None:
                bridge.kill()
        assert {} == seqs.problems(sensors, per_sensor)
        assert 1 <= reconnects
        assert 1 <= final["reconnects"]


class TestKafkaOutage:
    async def test_messages_wait_unacknowledged_then_flow(
        self, outage_kafka: OutageKafka, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Kafka down for 12 s under load: the bridge acknowledges nothing meanwhile, holds at
        most --max-in-flight messages and stops reading there, reports not ready; once Kafka
        is back everything flows, none lost or repeated."""
        sensors, per_sensor, max_in_flight = 10, 800, 500
        bootstrap = outage_kafka.bootstrap
        target = BridgeTarget.fresh(
            bootstrap, mosquitto.port, topic=unique("kafka-outage-in"), dlq=unique("dlq")
        )
        bridge = start_bridge(target, tmp_path, SENSORSTREAM_MAX_IN_FLIGHT=str(max_in_flight))
        devices = None
        try:
            await bridge.wait_ready()
            devices = start_devices(
                target, tmp_path, sensors=sensors, count=sensors * per_sensor, rate=800
            )
            await wait_until(
                lambda: bridge.metric_async("sensorstream_bridge_messages_acked_total"),
                lambda acked: acked >= 500,
                within=60,
                what="the bridge acknowledging 500 messages",
            )
            await outage_kafka.stop_async(hard=True)
            await asyncio.sleep(2.0)
            acked_during = await bridge.metric_async("sensorstream_bridge_messages_acked_total")
            await asyncio.sleep(10.0)  # past STALLED_SECONDS: /readyz says so
            assert acked_during == await bridge.metric_async(
                "sensorstream_bridge_messages_acked_total"
            ), "nothing is acknowledged while Kafka is away"
            in_flight = await bridge.metric_async("sensorstream_bridge_messages_in_flight")
            paused = await bridge.metric_async("sensorstream_bridge_reading_paused")
            assert 0 < in_flight <= max_in_flight
            assert 1 == paused
            assert not await asyncio.to_thread(bridge.ready)
            await outage_kafka.start_async()
            await devices.wait(within=180)
            seqs = await wait_for_input(bootstrap, target.topic, sensors * per_sensor, within=90)
            assert 0 == await bridge.terminate()
        finally:
            if devices is not None:
                devices.stop()
            if bridge.proc.poll() is None:
                bridge.kill()
        assert {} == seqs.problems(sensors, per_sensor)


class TestMqttCredentials:
    async def test_password_from_a_file(
        self, kafka_bootstrap: str, secured_mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """--mqtt-password-file: the bridge logs in with the file's password (and never logs
        it); a wrong one ends start-up with one line naming the settings to check."""
        assert secured_mosquitto.password_file is not None
        password = secured_mosquitto.password_file.read_text().strip()
        target = BridgeTarget.fresh(
            kafka_bootstrap, secured_mosquitto.port, topic=unique("auth-in"), dlq=unique("dlq")
        )
        bridge = start_bridge(
            target,
            tmp_path,
            SENSORSTREAM_MQTT_USERNAME="bridge",
            SENSORSTREAM_MQTT_PASSWORD_FILE=str(secured_mosquitto.password_file),
        )
        try:
            await bridge.wait_ready()
            assert 0 == await bridge.terminate()
        finally:
            if bridge.proc.poll() is None:
                bridge.kill()
        assert password not in bridge.logs()

        wrong = tmp_path / "wrong-password"
        wrong.write_text("not-the-password\n")
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "sensorstream.bridge"],
            env={
                **os.environ,
                "SENSORSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "SENSORSTREAM_MQTT_PORT": str(secured_mosquitto.port),
                "SENSORSTREAM_MQTT_USERNAME": "bridge",
                "SENSORSTREAM_MQTT_PASSWORD_FILE": str(wrong),
                "SENSORSTREAM_TOPIC": target.topic,
                "SENSORSTREAM_DLQ_TOPIC": target.dlq,
                "SENSORSTREAM_METRICS_PORT": "0",
                "SENSORSTREAM_LOG_FORMAT": "json",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert 1 == refused.returncode, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("sensorstream-mqtt-bridge: error: the MQTT broker at")
        assert "--mqtt-password-file" in last
