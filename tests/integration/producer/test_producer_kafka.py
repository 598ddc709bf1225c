"""The producer against the real broker: exact counts, complete sequences, safe shutdown,
and a broker outage ridden out without losing, duplicating or reordering a reading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import kafkactl
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kafka_helpers import consume_all, new_topic_name
from sensorstream.producer import METRIC_NAMES
from sensorstream.producer._service import ProducerService
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import StopSignal, load_settings
from sensorstream.schema import SensorReading, decode_reading

if TYPE_CHECKING:
    from conftest import OutageKafka

# The outage scenario of the issue: a steady rate, a broker gone for longer than
# aiokafka's request_timeout_ms (40 s) once its restart is counted, then back.
OUTAGE_RATE = 500
OUTAGE_SENSORS = 20
OUTAGE_SECONDS = 35.0
RUN_BEFORE_OUTAGE_SECONDS = 5.0
CATCH_UP_TIMEOUT = 60.0


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


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[kafkactl.KafkaCluster]:
    """A single-node broker of this test's own, which the test may kill."""
    data_dir = tmp_path / "kafka"
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(kafkactl.free_port())
    low, high = sorted(ports)
    try:
        yield kafkactl.start(ports=[low], controller_ports=[high], data_dir=data_dir)
    finally:
        kafkactl.stop(data_dir)


async def _producer_process(
    bootstrap: str, topic: str, *argv: str, metrics_port: int | None = None
) -> asyncio.subprocess.Process:
    """``python -m sensorstream.producer`` logging JSON to a pipe."""
    port = _free_port() if metrics_port is None else metrics_port
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sensorstream.producer",
        "--bootstrap-servers", bootstrap, "--topic", topic,
        "--metrics-port", str(port), "--log-format", "json", *argv,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def _collect_log(stream: asyncio.StreamReader, lines: list[dict[str, Any]]) -> None:
    """Append every JSON log line of ``stream`` to ``lines`` until it closes."""
    while raw := await stream.readline():
        if raw.startswith(b"{"):
            lines.append(orjson.loads(raw))


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


def _generated_per_sensor(sent: int, sensors: int) -> dict[str, int]:
    """Readings each sensor generated when the fleet generated ``sent`` (round-robin from 0)."""
    return {f"sensor-{i:04d}": (sent - i + sensors - 1) // sensors for i in range(sensors)}


def _ranges(seqs: Sequence[int]) -> str:
    """Sorted seqs spelled compactly: ``3-7,12``."""
    spans: list[list[int]] = []
    for seq in sorted(seqs):
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _seq_problems(generated: dict[str, int], seqs: dict[str, list[int]]) -> dict[str, str]:
    """Per sensor whose topic seqs are not exactly 0..N-1 once in order: what is wrong."""
    problems: dict[str, str] = {}
    for sensor in sorted(generated.keys() | seqs.keys()):
        expected = list(range(generated.get(sensor, 0)))
        got = seqs.get(sensor, [])
        if got == expected:
            continue
        seen = Counter(got)
        wrong = {
            "lost": _ranges(sorted(set(expected) - seen.keys())),
            "duplicated": _ranges([seq for seq, times in seen.items() if times > 1]),
            "out of order after": ",".join(str(a) for a, b in pairwise(got) if b < a),
            "never generated": _ranges(sorted(seen.keys() - set(expected))),
        }
        problems[sensor] = "; ".join(f"{what} {which}" for what, which in wrong.items() if which)
    return problems


async def _scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The producer's /metrics as ``{sample name: value}`` (labelled samples summed)."""
    async with http.get(url) as response:
        text = await response.text()
    values: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] += sample.value
    return values


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
        values = [orjson.loads(r.value) for r in records]
        assert 10_000 == len({v["event_id"] for v in values})

    async def test_event_times_follow_the_schedule(self, kafka_bootstrap: str) -> None:
        """Event times come from the schedule: exactly --rate events in each second of the run."""
        topic = new_topic_name("producer-schedule")
        settings = _settings(kafka_bootstrap, topic, "--rate", "1000", "--duration", "3")
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        assert 0 == await asyncio.wait_for(service.run(), 60)
        records = await consume_all(kafka_bootstrap, topic, timeout=30)
        times = [orjson.loads(r.value)["event_time"] for r in records]
        start = min(times)
        per_second = [0, 0, 0, 0]
        for event_time in times:
            per_second[(event_time - start) // 1000] += 1
        assert [1000, 1000, 1000, 0] == per_second
        assert times == [r.timestamp for r in records]


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

    async def test_broker_gone_exits_nonzero_within_timeout(
        self, own_broker: kafkactl.KafkaCluster
    ) -> None:
        """Broker killed, then SIGTERM: exit 1 within --shutdown-timeout, naming the lost count."""
        shutdown_timeout = 4.0
        process = await _producer_process(
            own_broker.bootstrap, new_topic_name("producer-broker-gone"),
            "--rate", "2000", "--sensors", "50", "--summary-interval", "1",
            "--shutdown-timeout", str(shutdown_timeout),
        )  # fmt: skip
        assert process.stderr is not None
        lines: list[dict[str, Any]] = []
        reader = asyncio.create_task(_collect_log(process.stderr, lines))
        try:
            deadline = time.monotonic() + 60
            while not any(line.get("event") == "producer_summary" and line["acked"] > 0
                          for line in lines):  # fmt: skip
                assert time.monotonic() < deadline, lines
                assert not reader.done(), lines
                await asyncio.sleep(0.05)
            for node in own_broker.nodes:
                os.killpg(node.pid, signal.SIGKILL)  # hard: no controlled shutdown
            await asyncio.sleep(1.0)  # the producer keeps sending into the void
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            exit_code = await asyncio.wait_for(process.wait(), 120)
            took = time.monotonic() - signalled
            await asyncio.wait_for(reader, 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        final = lines[-1]
        lost = final["sent"] - final["acked"]
        assert (1, "producer_stopped_with_losses") == (exit_code, final["event"]), lines[-5:]
        assert lost > 0
        assert lost == final["unacknowledged"]
        assert f"{lost} events were not acknowledged" in final["message"]
        assert took < shutdown_timeout + 3.0, f"exit took {took:.1f}s"


class TestBrokerOutage:
    async def test_outage_loses_duplicates_and_reorders_nothing(
        self, outage_kafka: OutageKafka
    ) -> None:
        """A 35 s outage: retries, debt shown, caught up after; every sensor's seqs 0..N-1 once."""
        topic = new_topic_name("producer-outage")
        port = _free_port()
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        process = await _producer_process(
            outage_kafka.bootstrap, topic,
            "--rate", str(OUTAGE_RATE), "--sensors", str(OUTAGE_SENSORS), "--seed", "7",
            "--summary-interval", "1", "--shutdown-timeout", "30",
            metrics_port=port,
        )  # fmt: skip
        assert process.stderr is not None
        lines: list[dict[str, Any]] = []
        reader = asyncio.create_task(_collect_log(process.stderr, lines))
        behind_in_outage: list[float] = []
        try:
            deadline = time.monotonic() + 60
            while not any(line.get("event") == "producer_summary" and line["acked"] > 0
                          for line in lines):  # fmt: skip
                assert time.monotonic() < deadline, lines
                assert not reader.done(), lines
                await asyncio.sleep(0.05)
            await asyncio.sleep(RUN_BEFORE_OUTAGE_SECONDS)
            async with aiohttp.ClientSession() as http:
                await outage_kafka.stop_async()
                outage_ends = time.monotonic() + OUTAGE_SECONDS
                while time.monotonic() < outage_ends:
                    await asyncio.sleep(1.0)
                    metrics = await _scrape(http, metrics_url)
                    behind_in_outage.append(
                        metrics["sensorstream_producer_behind_schedule_seconds"]
                    )
                await outage_kafka.start_async()
                restarted = time.monotonic()
                # Caught up: the debt is gone and acknowledgements flow again.
                while True:
                    await asyncio.sleep(0.5)
                    metrics = await _scrape(http, metrics_url)
                    behind = metrics["sensorstream_producer_behind_schedule_seconds"]
                    in_flight = metrics["sensorstream_producer_events_in_flight"]
                    if behind < 0.5 and in_flight < OUTAGE_RATE:
                        break
                    assert time.monotonic() - restarted < CATCH_UP_TIMEOUT, (
                        f"not caught up {CATCH_UP_TIMEOUT:g} s after the restart: "
                        f"behind {behind} s, {in_flight} in flight"
                    )
            await asyncio.sleep(2.0)  # some steady running after the catch-up
            process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.wait_for(process.wait(), 90)
            await asyncio.wait_for(reader, 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        final = lines[-1]
        records = await consume_all(outage_kafka.bootstrap, topic, timeout=60)
        generated = _generated_per_sensor(final["sent"], OUTAGE_SENSORS)
        problems = _seq_problems(generated, _seqs_by_sensor(records))
        assert {} == problems, (
            f"{len(problems)} of {OUTAGE_SENSORS} sensors wrong in {len(records)} records "
            f"(final log line: {final})"
        )
        assert (0, "producer_stopped") == (exit_code, final["event"]), lines[-5:]
        assert (final["sent"], 0) == (final["acked"], final["unacknowledged"])
        retries = [
            line
            for line in lines
            if line.get("event") == "retry_scheduled" and line.get("operation") == "enqueue batch"
        ]
        assert retries, "no retry_scheduled (operation 'enqueue batch') logged in the outage"
        assert max(behind_in_outage) > OUTAGE_SECONDS / 2, behind_in_outage


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

    @pytest.mark.parametrize("service", ["producer", "processor"])
    async def test_sigterm_while_waiting_for_the_broker_stops_at_once(self, service: str) -> None:
        """No broker and a minute of --startup-timeout: a SIGTERM ends the wait with a
        clean exit 0 within seconds, as an orchestrator stopping the pod expects."""
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"sensorstream.{service}",
            "--bootstrap-servers", f"127.0.0.1:{_free_port()}", "--startup-timeout", "60",
            "--metrics-port", str(port), "--log-level", "error",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:  # serving /healthz: it is in the start-up retries now
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                assert time.monotonic() < deadline, f"{service} never served /healthz"
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(process.communicate(), 10)
        finally:
            if process.returncode is None:
                process.kill()
        assert (0, False) == (process.returncode, "Traceback" in err.decode())
        assert time.monotonic() - stopped < 10
