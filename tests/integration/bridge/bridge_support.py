"""Helpers for the bridge's tests: the bridge and the device simulator as subprocesses, and
what the input topic holds per sensor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
from processor_support import HTTP_TIMEOUT, free_port

from kafka_helpers import consume_all
from sensorstream.schema import SensorReading, decode_reading


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _json_events(path: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            found.append(entry)
    return found


@dataclass
class Bridge:
    """A ``sensorstream-mqtt-bridge`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    instance: str

    def get(self, path: str) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` in /metrics (those with ``labels``, if given)."""
        _, body = self.get("/metrics")
        total = 0.0
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        for line in body.splitlines():
            named = line.startswith(name) and line[len(name)] in " {"
            if named and all(label in line for label in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def metric_async(self, name: str, **labels: str) -> float:
        return await asyncio.to_thread(self.metric, name, **labels)

    def ready(self) -> bool:
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}: {self.logs()[-3000:]}")
            if await asyncio.to_thread(self.ready):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"bridge not ready after {within}s: {self.logs()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, grace: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, grace)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        return _json_events(self.log_path, name)


@dataclass
class BridgeTarget:
    """What one test's bridges connect to and write to."""

    bootstrap: str
    mqtt_port: int
    prefix: str
    """MQTT topics are ``<prefix>/<sensor id>/readings``."""
    topic: str
    dlq: str
    client_id: str = field(default_factory=lambda: unique("bridge"))

    @classmethod
    def fresh(cls, bootstrap: str, mqtt_port: int, *, topic: str, dlq: str) -> BridgeTarget:
        return cls(bootstrap, mqtt_port, unique("sensors"), topic, dlq)


def start_bridge(target: BridgeTarget, tmp_path: Path, *extra: str, **env: str) -> Bridge:
    port = free_port()
    instance = unique("bridge-instance")
    log_path = tmp_path / f"{instance}.log"
    full_env = {
        **os.environ,
        "SENSORSTREAM_BOOTSTRAP_SERVERS": target.bootstrap,
        "SENSORSTREAM_MQTT_PORT": str(target.mqtt_port),
        "SENSORSTREAM_MQTT_TOPIC": f"{target.prefix}/+/readings",
        "SENSORSTREAM_MQTT_CLIENT_ID": target.client_id,
        "SENSORSTREAM_TOPIC": target.topic,
        "SENSORSTREAM_DLQ_TOPIC": target.dlq,
        "SENSORSTREAM_METRICS_PORT": str(port),
        "SENSORSTREAM_INSTANCE_ID": instance,
        "SENSORSTREAM_LOG_FORMAT": "json",
        "SENSORSTREAM_SUMMARY_INTERVAL": "1",
        "SENSORSTREAM_MQTT_RECONNECT_MAX": "1",
        **env,
    }
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sensorstream.bridge", *extra],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Bridge(proc=proc, port=port, log_path=log_path, instance=instance)


@dataclass
class Devices:
    """A ``sensorstream-mqtt-devices`` subprocess."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    async def wait(self, within: float = 120.0) -> dict[str, Any]:
        """Its exit status 0, and its final ``devices_stopped`` line."""
        code = await asyncio.to_thread(self.proc.wait, within)
        assert 0 == code, self.log_path.read_text(errors="replace")[-3000:]
        [final] = _json_events(self.log_path, "devices_stopped")
        return final

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_devices(
    target: BridgeTarget,
    tmp_path: Path,
    *,
    sensors: int,
    count: int,
    rate: float,
    poison_every: int = 0,
    seed: int = 7,
    sensor_prefix: str = "sensor-",
) -> Devices:
    log_path = tmp_path / f"{unique('devices')}.log"
    env = {
        **os.environ,
        "SENSORSTREAM_MQTT_PORT": str(target.mqtt_port),
        "SENSORSTREAM_MQTT_CLIENT_ID": unique("devices"),
        "SENSORSTREAM_LOG_FORMAT": "json",
    }
    argv = [
        sys.executable,
        "-m",
        "sensorstream.bridge._devices",
        "--sensors",
        str(sensors),
        "--count",
        str(count),
        "--rate",
        str(rate),
        "--seed",
        str(seed),
        "--anomaly-probability",
        "0",
        "--topic-template",
        f"{target.prefix}/{{sensor_id}}/readings",
        "--poison-every",
        str(poison_every),
        "--sensor-prefix",
        sensor_prefix,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return Devices(proc=proc, log_path=log_path)


@dataclass
class InputSeqs:
    """Each sensor's seqs in the input topic, in the order they are stored."""

    by_sensor: dict[str, list[int]]
    undecodable: int

    @property
    def total(self) -> int:
        return sum(len(seqs) for seqs in self.by_sensor.values())

    def duplicates(self) -> int:
        """Readings stored again (a seq the sensor already has earlier in the topic)."""
        return sum(len(seqs) - len(set(seqs)) for seqs in self.by_sensor.values())

    def problems(self, sensors: int, per_sensor: int) -> dict[str, dict[str, object]]:
        """Per sensor: seqs missing from 0..per_sensor-1, repeated, or stored out of order."""
        report: dict[str, dict[str, object]] = {}
        if len(self.by_sensor) != sensors:
            report["(sensors)"] = {"expected": sensors, "found": len(self.by_sensor)}
        for sensor, seqs in sorted(self.by_sensor.items()):
            entry: dict[str, object] = {}
            missing = sorted(set(range(per_sensor)) - set(seqs))
            if missing:
                entry["missing"] = missing[:20]
            repeated = len(seqs) - len(set(seqs))
            if repeated:
                entry["repeated"] = repeated
            backwards = [(a, b) for a, b in pairwise(seqs) if b <= a]
            if backwards:
                entry["out_of_order"] = backwards[:10]
            if entry:
                report[sensor] = entry
        return report


async def input_seqs(bootstrap: str, topic: str) -> InputSeqs:
    by_sensor: dict[str, list[int]] = defaultdict(list)
    undecodable = 0
    for record in await consume_all(bootstrap, topic, timeout=60):
        decoded = decode_reading(record.value or b"")
        if isinstance(decoded, SensorReading) and decoded.seq is not None:
            assert record.key == decoded.sensor_id.encode(), "keyed by sensor id"
            by_sensor[decoded.sensor_id].append(decoded.seq)
        else:
            undecodable += 1
    return InputSeqs(dict(by_sensor), undecodable)


async def wait_for_input(
    bootstrap: str, topic: str, expected: int, *, within: float = 60.0
) -> InputSeqs:
    """The input topic's seqs once it holds ``expected`` distinct readings (or after
    ``within`` s: then whatever it holds)."""
    deadline = time.monotonic() + within
    while True:
        seqs = await input_seqs(bootstrap, topic)
        distinct = sum(len(set(s)) for s in seqs.by_sensor.values())
        if distinct >= expected or time.monotonic() > deadline:
            return seqs
        await asyncio.sleep(0.5)
