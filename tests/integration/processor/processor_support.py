"""Helpers for the processor's reliability tests: input, subprocesses, output checks."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kafka_helpers import consume_all, create_topic, new_topic_name
from sensorstream.audit import AuditReport, AuditTopics, audit_pipeline
from sensorstream.schema import (
    TOPOLOGY,
    SensorReading,
    WindowAggregate,
    decode_aggregate,
    decode_alert,
    encode_reading,
)

HERE = Path(__file__).resolve().parent
BIG = str(4 * 1024 * 1024)
IDLE_TIMEOUT = "5"
"""The processors' --idle-timeout: short enough that a run's last windows close soon after
its input ends, long enough that a test producer stalled for a few seconds on a loaded
machine does not make a partition look idle mid-stream (its later readings would be late)."""

ALERT_ABOVE = 25.5
"""--temperature-high of the tests that count alerts (``ALERTING``). ``reading`` cycles the
temperature 20..26 °C with ``seq``; with the default 2 °C hysteresis every reading with
``seq % 7 == 6`` crosses it anew and raises exactly one temperature_high alert."""
ALERTING = {"SENSORSTREAM_TEMPERATURE_HIGH": str(ALERT_ABOVE)}
HTTP_TIMEOUT = 10.0
"""Seconds a service's /metrics or /readyz may take: a service busy on a loaded machine
(two test workers on two cores) is slow to answer, not wrong."""

T = TypeVar("T")


async def wait_until(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, within: float, what: str
) -> T:
    """Call ``probe`` until ``accept`` takes its value; return that value, or fail naming
    ``what`` (and the last value seen) after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}; last seen {value!r}")
        await asyncio.sleep(0.25)


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

    @property
    def outputs(self) -> tuple[str, str, str]:
        return (self.aggregates, self.alerts, self.dlq)


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


def poison(i: int) -> bytes:
    """The ``i``-th malformed payload ``produce_readings`` mixes in: unique, not JSON."""
    return b'{"poison": %d' % i


@dataclass(frozen=True)
class Produced:
    """What ``produce_readings`` wrote: how many readings, and the poison payloads."""

    readings: int
    poison: list[bytes] = field(default_factory=list)


async def produce_readings(
    bootstrap: str,
    topic: str,
    *,
    sensors: int,
    per_sensor: int | None = None,
    until: asyncio.Event | None = None,
    rate: float,
    step_ms: int = 20,
    poison_every: int = 0,
) -> Produced:
    """Produce readings for each sensor, round robin, at about ``rate`` ev/s: ``per_sensor``
    rounds, or whole rounds until ``until`` is set. With ``poison_every`` also one
    malformed payload (``poison``) after every that many readings."""
    assert (per_sensor is None) != (until is None), "per_sensor or until, not both"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        base_ms = int(time.time() * 1000)
        chunk = max(1, int(rate / 20))
        started = time.monotonic()
        sent = 0
        poisoned: list[bytes] = []
        futures = []
        for seq in itertools.count():
            if seq == per_sensor or (until is not None and until.is_set()):
                break
            for sensor in range(sensors):
                r = reading(sensor, seq, base_ms, step_ms)
                futures.append(
                    await producer.send(topic, encode_reading(r), key=r.sensor_id.encode())
                )
                sent += 1
                if poison_every and sent % poison_every == 0:
                    payload = poison(len(poisoned))
                    key = f"poison-{len(poisoned)}".encode()
                    futures.append(await producer.send(topic, payload, key=key))
                    poisoned.append(payload)
                if sent % chunk == 0:
                    await asyncio.gather(*futures)
                    futures.clear()
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
        return Produced(sent, poisoned)
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
            with urllib.request.urlopen(self.url(path), timeout=HTTP_TIMEOUT) as resp:
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

    async def metric_async(self, name: str) -> float:
        """``metric`` off the event loop (for polling while the test's clients run)."""
        return await asyncio.to_thread(self.metric, name)

    def assigned(self) -> frozenset[int]:
        """The partitions this member works on, as /readyz reports them (empty until ready)."""
        try:
            status, body = self.get("/readyz")
        except OSError:
            return frozenset()
        if status != 200:
            return frozenset()
        return frozenset(orjson.loads(body)["assigned_partitions"])

    async def assigned_async(self) -> frozenset[int]:
        return await asyncio.to_thread(self.assigned)

    async def wait_ready(self, within: float = 30.0) -> frozenset[int]:
        """Wait until /readyz is 200 *and* the member works on at least one partition;
        return those partitions. (/readyz alone turns 200 on any assignment, an empty
        one too.)"""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"processor exited {self.proc.returncode}: {self.logs()}")
            assigned = await self.assigned_async()
            if assigned:
                return assigned
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"processor not working on any partition after {within}s: {self.logs()[-3000:]}"
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets and state but does nothing."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    async def terminate(self, grace: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, grace)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """This processor's JSON log lines of event ``name``, in order."""
        found = []
        for line in self.logs().splitlines():
            if f'"{name}"' not in line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
        return found

    def resumed_from(self) -> dict[int, int]:
        """Per input partition, the offset this member resumed it from when it was first
        assigned it (-1: the group had no commit), from its ``partitions_assigned`` lines."""
        resumed: dict[int, int] = {}
        for entry in self.events("partitions_assigned"):
            for partition, offset in entry["resumed_from"].items():
                resumed.setdefault(int(partition), int(offset))
        return resumed


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
        "SENSORSTREAM_IDLE_TIMEOUT": IDLE_TIMEOUT,
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


# --------------------------------------------------------------------------- group and topics


def settled(assignments: Sequence[frozenset[int]], partitions: int) -> bool:
    """True if every member has partitions, none has one another has, and together they
    have all ``partitions``: the group's rebalance is over."""
    together = frozenset().union(*assignments)
    return (
        all(assignments)
        and sum(len(a) for a in assignments) == len(together)
        and together == frozenset(range(partitions))
    )


async def wait_for_assignment(
    processors: Sequence[Processor], partitions: int, *, within: float = 60.0
) -> list[frozenset[int]]:
    """Each member's partitions once the group has settled (see ``settled``)."""

    async def probe() -> list[frozenset[int]]:
        return list(await asyncio.gather(*(p.assigned_async() for p in processors)))

    return await wait_until(
        probe,
        lambda assignments: settled(assignments, partitions),
        within=within,
        what=f"{len(processors)} members sharing {partitions} partitions",
    )


async def committed_offsets(bootstrap: str, topics: Topics) -> dict[int, tuple[int, str]]:
    """The group's committed (offset, metadata) per input partition; absent: no commit yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(topics.group)
    finally:
        await admin.close()
    return {
        tp.partition: (meta.offset, meta.metadata)
        for tp, meta in offsets.items()
        if tp.topic == topics.input and meta.offset >= 0
    }


def replay_until(metadata: str) -> int:
    """The offset up to which a commit's outputs were acknowledged, from the processor's
    commit metadata ``"until:watermark"``: a restart only replays the records below it."""
    return int(metadata.split(":", 1)[0])


async def wait_for_commits(
    bootstrap: str, topics: Topics, *, partitions: int, at_least: int = 1, within: float = 30.0
) -> dict[int, tuple[int, str]]:
    """The group's commits once each of the ``partitions`` input partitions has committed
    an offset of ``at_least`` or more: work on every partition is done and committed."""
    return await wait_until(
        lambda: committed_offsets(bootstrap, topics),
        lambda offsets: (
            len(offsets) == partitions and all(offset >= at_least for offset, _ in offsets.values())
        ),
        within=within,
        what=f"commits at offset >= {at_least} on all {partitions} partitions of {topics.group}",
    )


async def end_offsets(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> dict[int, int]:
    """Per partition of ``topic``, its end: the high watermark, or with ``read_committed``
    the last stable offset (below the first record of a transaction still open)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic, p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    ]
    assert partitions, f"topic {topic} not found: {described}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def open_transactions(
    bootstrap: str, topics: Iterable[str]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Partitions holding records of a transaction still open: their last stable offset
    lags the high watermark. (topic, partition) -> (LSO, high watermark)."""
    found = {}
    for topic in topics:
        high = await end_offsets(bootstrap, topic)
        stable = await end_offsets(bootstrap, topic, isolation_level="read_committed")
        for partition, hw in high.items():
            if stable[partition] < hw:
                found[(topic, partition)] = (stable[partition], hw)
    return found


async def aborted_records(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Records of ``topic`` a read_uncommitted reader sees and a read_committed one does
    not: those of aborted transactions (once no transaction is open any more)."""
    committed = {
        (r.partition, r.offset)
        for r in await consume_all(bootstrap, topic, isolation_level="read_committed", timeout=20)
    }
    return [
        r
        for r in await consume_all(bootstrap, topic, timeout=20)
        if (r.partition, r.offset) not in committed
    ]


# --------------------------------------------------------------------------- outputs


async def read_aggregates(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[WindowAggregate]:
    records = await consume_all(bootstrap, topic, isolation_level=isolation_level, timeout=20)
    return [decode_aggregate(r.value) for r in records if r.value is not None]


async def read_alerts(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[tuple[str, str, str]]:
    """Every alert in ``topic`` as (sensor_id, event_id, kind), repeats included."""
    records = await consume_all(bootstrap, topic, isolation_level=isolation_level, timeout=20)
    alerts = [decode_alert(r.value) for r in records if r.value is not None]
    return [(a.sensor_id, a.event_id, a.kind) for a in alerts]


async def expected_alerts(
    bootstrap: str, topics: Topics, *, excluding: Iterable[str] = ()
) -> list[tuple[str, str, str]]:
    """The alerts the input calls for under ``ALERTING``: one per reading above
    ``ALERT_ABOVE`` (but the ``excluding`` event ids, dead-lettered ones), sorted, as
    ``read_alerts`` gives them."""
    from sensorstream.schema import decode_reading

    skip = set(excluding)
    expected = []
    for record in await consume_all(bootstrap, topics.input, timeout=30):
        decoded = decode_reading(record.value)
        if (
            isinstance(decoded, SensorReading)
            and decoded.temperature > ALERT_ABOVE
            and decoded.event_id not in skip
        ):
            expected.append((decoded.sensor_id, decoded.event_id, "temperature_high"))
    return sorted(expected)


async def read_dead_letters(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[bytes | None]:
    """The value of every dead letter in ``topic``, repeats included."""
    records = await consume_all(bootstrap, topic, isolation_level=isolation_level, timeout=20)
    return [r.value for r in records]


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


def windows(aggregates: Iterable[WindowAggregate]) -> dict[str, list[WindowAggregate]]:
    """Per sensor, every *distinct* emitted aggregate once, in window order: identical
    repeats fold into one, differing ones (which ``emission_problems`` reports) all stay."""
    per_sensor: dict[str, set[WindowAggregate]] = defaultdict(set)
    for agg in aggregates:
        per_sensor[agg.sensor_id].add(agg)
    return {
        sensor: sorted(aggs, key=lambda a: (a.window_start, a.count))
        for sensor, aggs in sorted(per_sensor.items())
    }


def emission_problems(aggregates: Iterable[WindowAggregate], *, once: bool) -> list[str]:
    """What is wrong with the aggregates as emitted, every copy looked at (empty if nothing).

    A window may be emitted again only by an at-least-once replay, and then identically:
    two different contents for one window (a partial aggregate beside the whole one, or
    one that counted a reading twice) is a problem, and with ``once`` any repeat is. Each
    seq is produced once, so every aggregate must count exactly the readings of its seq
    range (``last_seq - first_seq + 1``): fewer is a partial window, more a reading
    counted twice.
    """
    by_window: dict[tuple[str, int], list[WindowAggregate]] = defaultdict(list)
    for agg in aggregates:
        by_window[(agg.sensor_id, agg.window_start)].append(agg)
    problems = []
    for (sensor, start), copies in sorted(by_window.items()):
        distinct = set(copies)
        if len(distinct) > 1:
            problems.append(
                f"{sensor} window {start} emitted {len(copies)} times with {len(distinct)} "
                f"different contents (counts {sorted(a.count for a in copies)})"
            )
        elif once and len(copies) > 1:
            problems.append(f"{sensor} window {start} emitted {len(copies)} times")
        for agg in sorted(distinct, key=lambda a: a.count):
            if agg.first_seq is None or agg.last_seq is None:
                problems.append(f"{sensor} window {start} has no seq range")
                continue
            span = agg.last_seq - agg.first_seq + 1
            if agg.count != span:
                problems.append(
                    f"{sensor} window {start}: count {agg.count} for seqs "
                    f"{agg.first_seq}..{agg.last_seq} ({span} readings)"
                )
    return problems


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

    The accounting is ``sensorstream-audit``'s (``report``): it looks at every emitted
    aggregate, so a partial window or a window re-emitted with other contents shows, and
    an identical at-least-once re-emission does not count twice. The raw topic contents
    beside it serve assertions about particular readings.
    """

    report: AuditReport
    produced: dict[str, set[int]]
    dead_lettered: dict[str, dict[int, str]]
    """sensor -> seq -> DLQ reason."""
    aggregates: dict[str, list[WindowAggregate]]
    """sensor -> one aggregate per window (the largest), for sums over a sensor's windows."""
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

    def problems(self) -> dict[str, dict[str, object]]:
        """Per sensor, as the audit found it: seq ranges lost (in no aggregate and not
        dead-lettered), readings counted twice, partial or conflicting windows. Empty when
        every reading is accounted for exactly once."""
        report: dict[str, dict[str, object]] = {}
        for sensor in self.report.sensors:
            entry = {
                name: value
                for name, value in (
                    ("lost", sensor.missing_seqs),
                    ("duplicated", sensor.duplicated),
                    ("partial", sensor.partial_windows),
                    ("conflicting", sensor.conflicting_windows),
                )
                if value
            }
            if entry:
                report[sensor.sensor_id] = entry
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
    report = await audit_pipeline(
        bootstrap,
        AuditTopics(input=topics.input, aggregates=topics.aggregates, dlq=topics.dlq),
        isolation_level=isolation_level,
        limit=100_000,
    )
    return SeqLedger(report, dict(produced), dict(dead), deduplicated(aggregates), dict(order))


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
