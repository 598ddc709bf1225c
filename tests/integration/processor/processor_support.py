"""Helpers for the processor's reliability tests: input, subprocesses, output checks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from aiokafka import AIOKafkaProducer

from kafka_helpers import consume_all, create_topic, new_topic_name
from sensorstream.schema import (
    TOPOLOGY,
    SensorReading,
    WindowAggregate,
    decode_aggregate,
    encode_reading,
)

HERE = Path(__file__).resolve().parent
BIG = str(4 * 1024 * 1024)


@dataclass
class Topics:
    """One test's private topics and group."""

    input: str
    aggregates: str
    alerts: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, prefix: str) -> Topics:
        return cls(
            input=new_topic_name(f"{prefix}-in"),
            aggregates=new_topic_name(f"{prefix}-agg"),
            alerts=new_topic_name(f"{prefix}-alerts"),
            dlq=new_topic_name(f"{prefix}-dlq"),
            group=new_topic_name(f"{prefix}-group"),
        )


async def make_input(bootstrap: str, topics: Topics, partitions: int = 6) -> None:
    """The test's input topic as the topology declares it (the malformed corpus holds a
    ~1 MiB payload, so it also takes records up to 4 MiB)."""
    spec = TOPOLOGY.configured(partitions=partitions, names={"input": topics.input}).input
    config = {**spec.creation_configs(), "max.message.bytes": BIG}
    await create_topic(bootstrap, spec.name, spec.partitions, config=config)


def reading(sensor: int, seq: int, base_ms: int, step_ms: int) -> SensorReading:
    return SensorReading(
        schema_version=1,
        event_id=str(uuid.uuid4()),
        sensor_id=f"sensor-{sensor:04d}",
        seq=seq,
        event_time=base_ms + seq * step_ms,
        temperature=20.0 + (seq % 7),
        humidity=50.0 + (seq % 11),
    )


async def produce_readings(
    bootstrap: str,
    topic: str,
    *,
    sensors: int,
    per_sensor: int,
    rate: float,
    step_ms: int = 20,
) -> int:
    """Produce ``per_sensor`` readings for each sensor, round robin, at about ``rate`` ev/s."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        base_ms = int(time.time() * 1000)
        chunk = max(1, int(rate / 20))
        started = time.monotonic()
        sent = 0
        futures = []
        for seq in range(per_sensor):
            for sensor in range(sensors):
                r = reading(sensor, seq, base_ms, step_ms)
                futures.append(
                    await producer.send(topic, encode_reading(r), key=r.sensor_id.encode())
                )
                sent += 1
                if sent % chunk == 0:
                    await asyncio.gather(*futures)
                    futures.clear()
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
        return sent
    finally:
        await producer.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processor:
    """A ``sensorstream-processor`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` in /metrics."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"processor exited {self.proc.returncode}: {self.logs()}")
            try:
                status, _ = await asyncio.to_thread(self.get, "/readyz")
            except OSError:
                status = 0
            if status == 200:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"processor not ready after {within}s: {self.logs()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, grace: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, grace)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_processor(
    bootstrap: str, topics: Topics, tmp_path: Path, *extra: str, **env: str
) -> Processor:
    port = free_port()
    log_path = tmp_path / f"processor-{uuid.uuid4().hex[:6]}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "SENSORSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "SENSORSTREAM_TOPIC": topics.input,
        "SENSORSTREAM_GROUP_ID": topics.group,
        "SENSORSTREAM_AGGREGATES_TOPIC": topics.aggregates,
        "SENSORSTREAM_ALERTS_TOPIC": topics.alerts,
        "SENSORSTREAM_DLQ_TOPIC": topics.dlq,
        "SENSORSTREAM_METRICS_PORT": str(port),
        "SENSORSTREAM_LOG_FORMAT": "json",
        "SENSORSTREAM_WINDOW_SIZE": "1",
        "SENSORSTREAM_ALLOWED_LATENESS": "0.5",
        "SENSORSTREAM_IDLE_TIMEOUT": "2",
        "SENSORSTREAM_COMMIT_INTERVAL": "0.5",
        "SENSORSTREAM_OUTPUT_PARTITIONS": "3",
        "SENSORSTREAM_SESSION_TIMEOUT": "6",
        "SENSORSTREAM_HEARTBEAT_INTERVAL": "1",
        **env,
    }
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sensorstream.processor", *extra],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Processor(proc=proc, port=port, log_path=log_path, env=full_env)


def stop_all(processors: Iterable[Processor]) -> None:
    for p in processors:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


async def read_aggregates(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[WindowAggregate]:
    records = await consume_all(bootstrap, topic, isolation_level=isolation_level, timeout=20)
    return [decode_aggregate(r.value) for r in records if r.value is not None]


def deduplicated(aggregates: Iterable[WindowAggregate]) -> dict[str, list[WindowAggregate]]:
    """Per sensor, one aggregate per window (the largest count), by window start."""
    best: dict[tuple[str, int], WindowAggregate] = {}
    for agg in aggregates:
        key = (agg.sensor_id, agg.window_start)
        if key not in best or agg.count > best[key].count:
            best[key] = agg
    per_sensor: dict[str, list[WindowAggregate]] = defaultdict(list)
    for (sensor, _), agg in sorted(best.items()):
        per_sensor[sensor].append(agg)
    return dict(per_sensor)


def counts(per_sensor: dict[str, list[WindowAggregate]]) -> dict[str, int]:
    return {sensor: sum(a.count for a in aggs) for sensor, aggs in per_sensor.items()}


def seq_gaps(aggs: list[WindowAggregate], per_sensor: int) -> list[str]:
    """Problems with the seq coverage of one sensor's windows (empty when 0..N-1 contiguous)."""
    problems = []
    expected = 0
    for agg in aggs:
        if agg.first_seq != expected:
            problems.append(
                f"window {agg.window_start} starts at seq {agg.first_seq}, not {expected}"
            )
        if agg.last_seq is None or agg.first_seq is None or agg.last_seq < agg.first_seq:
            problems.append(
                f"window {agg.window_start} has seq range {agg.first_seq}..{agg.last_seq}"
            )
            continue
        if agg.count != agg.last_seq - agg.first_seq + 1:
            problems.append(f"window {agg.window_start} count {agg.count} != seq span")
        expected = agg.last_seq + 1
    if expected != per_sensor:
        problems.append(f"seqs end at {expected - 1}, not {per_sensor - 1}")
    return problems


def overcounted(aggregates: Iterable[WindowAggregate], *, exact: bool) -> list[str]:
    """Aggregates counting more readings than their seq span holds (each seq produced once).

    With ``exact`` (no restart or rebalance in the run) the count must equal the span:
    a reading counted twice in one window shows up here even if deduplication would
    hide it. In general a count may only be lower (a partial aggregate before a crash).
    """
    problems = []
    for agg in aggregates:
        if agg.first_seq is None or agg.last_seq is None:
            problems.append(f"{agg.sensor_id} window {agg.window_start} has no seq range")
            continue
        span = agg.last_seq - agg.first_seq + 1
        if agg.count > span or (exact and agg.count != span):
            problems.append(
                f"{agg.sensor_id} window {agg.window_start}: count {agg.count} for seqs "
                f"{agg.first_seq}..{agg.last_seq}"
            )
    return problems


async def wait_for_aggregates(
    bootstrap: str,
    topic: str,
    expected_total: int,
    *,
    within: float = 40.0,
    isolation_level: str = "read_uncommitted",
) -> list[WindowAggregate]:
    """Poll ``topic`` until deduplicated counts add up to ``expected_total`` (or ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        aggregates = await read_aggregates(bootstrap, topic, isolation_level=isolation_level)
        total = sum(counts(deduplicated(aggregates)).values())
        if total >= expected_total or time.monotonic() > deadline:
            return aggregates
        await asyncio.sleep(1.0)


# --------------------------------------------------------------------------- seq accounting


@dataclass
class SeqLedger:
    """Per-sensor ``seq`` accounting of one run: where each produced reading ended up.

    Built from what is really in the topics: the input (what was produced), the
    aggregates (deduplicated by window: an at-least-once replay may repeat a window,
    identically) and the dead letters (decoded back to their reading where possible).
    """

    produced: dict[str, set[int]]
    dead_lettered: dict[str, dict[int, str]]
    """sensor -> seq -> DLQ reason."""
    aggregates: dict[str, list[WindowAggregate]]
    produced_order: dict[str, list[int]] = field(default_factory=dict)
    """sensor -> its seqs in the order they are stored (offset order on its partition)."""

    def reordered(self) -> dict[str, list[tuple[int, int]]]:
        """Per sensor, the (earlier, later) seq pairs stored out of order, if any."""
        report = {}
        for sensor, seqs in self.produced_order.items():
            pairs = [(a, b) for a, b in pairwise(seqs) if b < a]
            if pairs:
                report[sensor] = pairs[:10]
        return report

    def problems(self) -> dict[str, dict[str, list[object]]]:
        """Per sensor: seqs lost (in no aggregate and not dead-lettered), seqs counted twice,
        and partial aggregates (count differs from the produced, not dead-lettered seqs in
        their range). Empty when every reading is accounted for exactly once."""
        report: dict[str, dict[str, list[object]]] = {}
        for sensor in sorted(set(self.produced) | set(self.aggregates)):
            produced = self.produced.get(sensor, set())
            dlq = self.dead_lettered.get(sensor, {})
            covered: dict[int, int] = defaultdict(int)
            partial: list[object] = []
            for agg in self.aggregates.get(sensor, []):
                assert agg.first_seq is not None
                assert agg.last_seq is not None
                expected = {s for s in range(agg.first_seq, agg.last_seq + 1) if s in produced}
                expected -= dlq.keys()
                if agg.count != len(expected):
                    partial.append(
                        f"window {agg.window_start}: count {agg.count}, seqs "
                        f"{agg.first_seq}..{agg.last_seq} hold {len(expected)}"
                    )
                for seq in expected:
                    covered[seq] += 1
            lost = sorted(produced - covered.keys() - dlq.keys())
            twice = sorted(s for s, n in covered.items() if n > 1)
            entry = {
                name: values
                for name, values in (("lost", lost), ("duplicated", twice), ("partial", partial))
                if values
            }
            if entry:
                report[sensor] = entry
        return report

    def dlq_reasons(self) -> dict[str, int]:
        """How many dead-lettered readings per reason, over all sensors."""
        totals: dict[str, int] = defaultdict(int)
        for by_seq in self.dead_lettered.values():
            for reason in by_seq.values():
                totals[reason] += 1
        return dict(totals)


async def seq_ledger(
    bootstrap: str, topics: Topics, *, isolation_level: str = "read_uncommitted"
) -> SeqLedger:
    """Read the input, aggregates and DLQ topics of ``topics`` into a :class:`SeqLedger`."""
    from sensorstream.schema import DeadLetterHeaders, decode_reading

    produced: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for record in await consume_all(bootstrap, topics.input, timeout=30):
        decoded = decode_reading(record.value)
        if isinstance(decoded, SensorReading) and decoded.seq is not None:
            assert decoded.seq not in produced[decoded.sensor_id], (
                f"{decoded.sensor_id} seq {decoded.seq} is in the input topic twice"
            )
            produced[decoded.sensor_id].add(decoded.seq)
            order[decoded.sensor_id].append(decoded.seq)
    dead: dict[str, dict[int, str]] = defaultdict(dict)
    for record in await consume_all(bootstrap, topics.dlq, timeout=30):
        decoded = decode_reading(record.value)
        if isinstance(decoded, SensorReading) and decoded.seq is not None:
            reason = DeadLetterHeaders.from_kafka_headers(record.headers).reason.value
            dead[decoded.sensor_id][decoded.seq] = reason
    aggregates = await read_aggregates(
        bootstrap, topics.aggregates, isolation_level=isolation_level
    )
    return SeqLedger(dict(produced), dict(dead), deduplicated(aggregates), dict(order))


async def settled_ledger(bootstrap: str, topics: Topics, *, within: float = 30.0) -> SeqLedger:
    """The run's ledger once every reading is accounted for (or after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        ledger = await seq_ledger(bootstrap, topics)
        if not ledger.problems() or time.monotonic() > deadline:
            return ledger
        await asyncio.sleep(1.0)


class LiveFeed:
    """Readings for ``sensors`` sensors with per-sensor ``seq`` from 0 and event time = now.

    ``run(seconds, rate)`` produces round robin at about ``rate`` events/s; ``send`` adds
    one reading of your own (the next seq of its sensor) in between. Like a real fleet,
    event time follows the wall clock, so a pause is a gap in event time, not lateness.
    """

    def __init__(self, bootstrap: str, topic: str, *, sensors: int) -> None:
        self.topic = topic
        self.sensors = sensors
        self.next_seq = [0] * sensors
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 * 1024 * 1024
        )
        self._turn = 0

    async def __aenter__(self) -> LiveFeed:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    def _next(self, sensor: int, event_time: int | None) -> SensorReading:
        seq = self.next_seq[sensor]
        self.next_seq[sensor] += 1
        now = int(time.time() * 1000)
        base = reading(sensor, seq, 0, 0)
        return SensorReading(
            schema_version=1,
            event_id=base.event_id,
            sensor_id=base.sensor_id,
            seq=seq,
            event_time=now if event_time is None else event_time,
            temperature=base.temperature,
            humidity=base.humidity,
        )

    async def send(self, sensor: int, *, event_time: int | None = None) -> SensorReading:
        """Produce the next reading of ``sensor`` (with ``event_time`` if given) and wait for it."""
        r = self._next(sensor, event_time)
        await self._producer.send_and_wait(self.topic, encode_reading(r), key=r.sensor_id.encode())
        return r

    async def run(self, seconds: float, rate: float) -> int:
        """Produce round robin for ``seconds`` at about ``rate`` ev/s; return how many."""
        started = time.monotonic()
        sent = 0
        chunk = max(1, int(rate / 20))
        while time.monotonic() - started < seconds:
            futures = []
            for _ in range(chunk):
                sensor = self._turn % self.sensors
                self._turn += 1
                r = self._next(sensor, None)
                futures.append(
                    await self._producer.send(
                        self.topic, encode_reading(r), key=r.sensor_id.encode()
                    )
                )
            await asyncio.gather(*futures)
            sent += chunk
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        return sent

    @property
    def total(self) -> int:
        return sum(self.next_seq)
