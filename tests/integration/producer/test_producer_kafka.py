"""The producer against the real broker: exact counts, complete sequences, safe shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry

from kafka_helpers import consume_all, new_topic_name
from sensorstream.producer import METRIC_NAMES
from sensorstream.producer._service import ProducerService
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import StopSignal, load_settings
from sensorstream.schema import SensorReading, decode_reading


def _settings(bootstrap: str, topic: str, *argv: str) -> ProducerSettings:
    return load_settings(
        ProducerSettings,
        ["--bootstrap-servers", bootstrap, "--topic", topic, "--metrics-port", "0", *argv],
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _seqs_by_sensor(records: Sequence[Any]) -> dict[str, list[int]]:
    """Per sensor, the seqs in the order read (partition by partition, offset order)."""
    partitions: dict[str, set[int]] = defaultdict(set)
    seqs: dict[str, list[int]] = defaultdict(list)
    for record in records:
        reading = decode_reading(record.value)
        assert isinstance(reading, SensorReading), reading
        assert record.key == reading.sensor_id.encode()
        assert reading.seq is not None
        partitions[reading.sensor_id].add(record.partition)
        seqs[reading.sensor_id].append(reading.seq)
    assert all(len(p) == 1 for p in partitions.values()), "a sensor spans partitions"
    return seqs


class TestPacedRun:
    async def test_five_seconds_at_2000_per_second(self, kafka_bootstrap: str) -> None:
        """5 s at 2,000/s delivers exactly 10,000 events, every sensor's seq complete, in order."""
        topic = new_topic_name("producer-paced")
        settings = _settings(kafka_bootstrap, topic, "--rate", "2000", "--duration", "5",
                             "--sensors", "37", "--seed", "1")  # fmt: skip
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        assert 0 == await asyncio.wait_for(service.run(), 60)
        assert service.sender is not None
        assert (10_000, 10_000, 0) == (
            service.sender.counts.sent,
            service.sender.counts.acked,
            service.sender.counts.failed,
        )
        records = await consume_all(kafka_bootstrap, topic, timeout=30)
        assert 10_000 == len(records)
        seqs = _seqs_by_sensor(records)
        assert 37 == len(seqs)
        for sensor_seqs in seqs.values():
            assert list(range(len(sensor_seqs))) == sensor_seqs
        assert 10_000 == len({orjson.loads(r.value)["event_id"] for r in records})


class TestObservability:
    async def test_metrics_and_readiness_while_running(self, kafka_bootstrap: str) -> None:
        """While sending, /readyz is 200 and /metrics has every documented metric."""
        topic = new_topic_name("producer-metrics")
        settings = _settings(kafka_bootstrap, topic, "--rate", "200", "--duration", "4")
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        task = asyncio.create_task(service.run())
        try:
            deadline = time.monotonic() + 30
            while service.sender is None or service.sender.counts.acked == 0:
                assert time.monotonic() < deadline, "nothing acknowledged in 30 s"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)  # one reporter pass sets the rate gauges
            assert service.server is not None
            base = f"http://127.0.0.1:{service.server.bound_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/readyz") as response:
                    ready = response.status
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
        finally:
            exit_code = await asyncio.wait_for(task, 60)
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        missing = [n for n in METRIC_NAMES if not any(s.startswith(n) for s in samples)]
        assert (200, [], 0) == (ready, missing, exit_code)
        assert "sensorstream_producer_target_rate_events_per_second 200.0" in samples
        assert "sensorstream_producer_up 1.0" in samples


class TestShutdown:
    async def test_sigterm_keeps_every_acknowledged_event(self, kafka_bootstrap: str) -> None:
        """SIGTERM mid-run: exit 0, the final summary's acked events are all in the topic."""
        topic = new_topic_name("producer-sigterm")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sensorstream.producer",
            "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--rate", "5000",
            "--sensors", "100", "--metrics-port", str(_free_port()), "--log-format", "json",
            "--summary-interval", "1",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert process.stderr is not None
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not any(line.get("event") == "producer_summary" and line["acked"] > 5000
                      for line in lines):  # fmt: skip
            assert time.monotonic() < deadline, lines
            raw = await asyncio.wait_for(process.stderr.readline(), 60)
            assert raw, lines
            lines.append(orjson.loads(raw))
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 60)
        lines += [orjson.loads(raw) for raw in rest.splitlines() if raw.startswith(b"{")]
        final = next(line for line in lines if line.get("event") == "producer_stopped")
        assert 0 == process.returncode
        assert (0, 0) == (final["failed"], final["unacknowledged"])

        records = await consume_all(kafka_bootstrap, topic, timeout=30)
        assert len(records) >= final["acked"] > 5000
        for sensor_seqs in _seqs_by_sensor(records).values():
            assert list(range(len(sensor_seqs))) == sensor_seqs


class TestStartupFailure:
    async def test_unreachable_broker_exits_nonzero_with_one_line(self) -> None:
        """No broker: retry for --startup-timeout, then exit 1 with one line saying why."""
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sensorstream.producer",
            "--bootstrap-servers", f"127.0.0.1:{_free_port()}", "--startup-timeout", "3",
            "--metrics-port", "0", "--log-level", "error",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 60)
        elapsed = time.monotonic() - started
        text = err.decode()
        last = text.strip().splitlines()[-1]
        assert 1 == process.returncode
        assert last.startswith("sensorstream-producer: error: cannot reach Kafka at 127.0.0.1:")
        assert "SENSORSTREAM_BOOTSTRAP_SERVERS" in last
        assert "Traceback" not in text
        assert elapsed < 30
