"""How fast ``sensorstream-audit`` accounts for readings, and what a sensor costs it.

Run: ``uv run python benchmarks/bench_audit.py`` (about 2-3 minutes; prints markdown).

1. Ledger alone (no Kafka): readings/s of decoding and accounting input records, plus
   one aggregate per 10 readings, in CPU time (best of 3).
2. Memory per sensor: each case in a fresh child process, RSS growth after feeding
   ``sensors x readings`` (and an aggregate per 10 readings). The same sensors with 10x
   the readings (10x the hours) must cost the same: memory follows sensors, not data
   (past the first ``window_memory`` windows, whose digests a sensor keeps).
3. End to end against a real single-node broker (deploy/kafka/kafkactl.py, free ports):
   a 6-partition input topic pre-filled with ``--events`` readings from 1,000 sensors
   and the matching aggregates; one ``audit_pipeline`` pass in a child process:
   readings/s of wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WINDOW = 10
"""Readings per aggregate."""
_READING = (
    b'{"schema_version":1,"event_id":"%b","sensor_id":"sensor-%07d","seq":%d,'
    b'"event_time":%d,"temperature":21.5,"humidity":48.0}'
)
_AGGREGATE = (
    b'{"sensor_id":"%b","window_start":%d,"window_end":%d,"count":%d,'
    b'"temperature_min":21.5,"temperature_max":21.5,"temperature_mean":21.5,'
    b'"humidity_min":48.0,"humidity_max":48.0,"humidity_mean":48.0,'
    b'"first_seq":%d,"last_seq":%d}'
)
BASE_MS = 1_780_000_000_000
_EVENT_IDS = [str(uuid.uuid4()).encode() for _ in range(4096)]
"""Making a UUID per reading would cost more than auditing it: cycle through a pool."""


def reading(sensor: int, seq: int) -> bytes:
    event_id = _EVENT_IDS[(sensor + seq) % 4096]
    return _READING % (event_id, sensor, seq, BASE_MS + seq * 1000)


def aggregate(sensor: int, first: int) -> bytes:
    start = BASE_MS + first * 1000
    sensor_id = b"sensor-%07d" % sensor
    return _AGGREGATE % (sensor_id, start, start + WINDOW * 1000, WINDOW, first, first + WINDOW - 1)


def rss_mb() -> float:
    """Resident set size, after giving freed heap back (decoding churns many objects)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def feed(ledger: object, sensors: int, readings: int) -> None:
    """Input round robin (seq by seq), then every sensor's aggregates."""
    from sensorstream.audit import Ledger

    assert isinstance(ledger, Ledger)
    offset = 0
    for seq in range(readings):
        for sensor in range(sensors):
            ledger.add_input(sensor % 6, offset, reading(sensor, seq))
            offset += 1
    for sensor in range(sensors):
        for first in range(0, readings, WINDOW):
            ledger.add_aggregate(aggregate(sensor, first))


def ledger_speed() -> dict[str, float]:
    from sensorstream.audit import Ledger

    sensors, readings = 1000, 1000
    inputs = [reading(s, q) for q in range(readings) for s in range(sensors)]
    aggs = [aggregate(s, f) for s in range(sensors) for f in range(0, readings, WINDOW)]
    best = float("inf")
    for _ in range(3):
        ledger = Ledger(input_topic="in")
        gc.collect()
        started = time.process_time()
        for offset, value in enumerate(inputs):
            ledger.add_input(offset % 6, offset, value)
        for value in aggs:
            ledger.add_aggregate(value)
        report = ledger.report()
        best = min(best, time.process_time() - started)
        assert report.ok, report.totals
    return {"readings": len(inputs), "aggregates": len(aggs), "seconds": best}


def memory_child(sensors: int, readings: int) -> None:
    from sensorstream.audit import Ledger

    gc.collect()
    before = rss_mb()
    ledger = Ledger(input_topic="in")
    started = time.process_time()
    feed(ledger, sensors, readings)
    report = ledger.report(limit=0)
    seconds = time.process_time() - started
    gc.collect()
    grown = rss_mb() - before
    assert report.ok, report.totals
    print(json.dumps({"mb": grown, "seconds": seconds, "readings": sensors * readings}))


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


# ------------------------------------------------------------------------- with Kafka
def prefill_aggregates(bootstrap: str, topic: str, events: int, sensors: int) -> None:
    from confluent_kafka import Producer

    per_sensor = events // sensors
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for sensor in range(sensors):
        sensor_id = f"sensor-{sensor:04d}"
        for first in range(0, per_sensor, WINDOW):
            count = min(WINDOW, per_sensor - first)
            start = BASE_MS + first * 10
            value = _AGGREGATE % (
                sensor_id.encode(),
                start,
                start + WINDOW * 10,
                count,
                first,
                first + count - 1,
            )
            while True:
                try:
                    producer.produce(topic, value, sensor_id.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    producer.flush(60)


def kafka_child(bootstrap: str, names: list[str]) -> None:
    from sensorstream.audit import AuditTopics, audit_pipeline

    started = time.perf_counter()
    report = asyncio.run(
        audit_pipeline(bootstrap, AuditTopics(input=names[0], aggregates=names[1], dlq=names[2]))
    )
    seconds = time.perf_counter() - started
    peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    cpu = time.process_time()
    print(
        json.dumps(
            {
                "ok": report.ok,
                "totals": {k: v for k, v in vars(report.totals).items() if v},
                "readings": report.totals.produced,
                "aggregated": report.totals.aggregated,
                "seconds": seconds,
                "cpu": cpu,
                "rss_mb": peak,
            }
        )
    )


def with_kafka(events: int) -> dict[str, float]:
    import kafkactl

    import bench_processor

    data_dir = Path(tempfile.mkdtemp(prefix="bench-audit-kafka-"))
    ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
    cluster = kafkactl.start(
        nodes=1, ports=ports[:1], controller_ports=ports[1:2], data_dir=data_dir
    )
    try:
        bootstrap = cluster.bootstrap
        run = uuid.uuid4().hex[:8]
        names = [f"bench-audit-in-{run}", f"bench-audit-agg-{run}", f"bench-audit-dlq-{run}"]
        for name in names:
            bench_processor.create_topic(bootstrap, name)
        bench_processor.prefill(bootstrap, names[0], events)
        prefill_aggregates(bootstrap, names[1], events, bench_processor.SENSORS)
        return run_child("--kafka-child", bootstrap, *names)
    finally:
        kafkactl.stop(data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--memory-child", nargs=2, type=int, metavar=("SENSORS", "READINGS"))
    parser.add_argument("--kafka-child", nargs=4, metavar=("BOOTSTRAP", "IN", "AGG", "DLQ"))
    parser.add_argument("--no-kafka", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    if args.kafka_child:
        kafka_child(args.kafka_child[0], args.kafka_child[1:])
        return

    speed = ledger_speed()
    rate = speed["readings"] / speed["seconds"]
    print("### Audit: the ledger alone (CPU time, best of 3)\n")
    print("| readings | aggregates | s | readings/s |")
    print("|---:|---:|---:|---:|")
    print(f"| {speed['readings']:,.0f} | {speed['aggregates']:,.0f} | {speed['seconds']:.2f} "
          f"| {rate:,.0f} |")  # fmt: skip

    print("\n### Audit: memory (RSS growth, one child process per row)\n")
    print("| sensors | readings each | readings | RSS growth MB | bytes/sensor | feed CPU s |")
    print("|---:|---:|---:|---:|---:|---:|")
    # 1,000 and 10,000 readings each (10x the hours) cost the same per sensor: both fill
    # the 64 remembered windows, and both are above 256 (CPython caches smaller ints).
    for sensors, readings in ((1_000, 1_000), (1_000, 10_000), (1_000_000, 10)):
        m = run_child("--memory-child", str(sensors), str(readings))
        per_sensor = m["mb"] * 1024 * 1024 / sensors
        print(f"| {sensors:,} | {readings} | {sensors * readings:,} | {m['mb']:.0f} "
              f"| {per_sensor:,.0f} | {m['seconds']:.1f} |")  # fmt: skip

    if args.no_kafka:
        return
    k = with_kafka(args.events)
    print(f"\n### Audit: end to end, {args.events:,} readings + aggregates on a real broker\n")
    print("| readings | wall s | readings/s | CPU s | peak RSS MB | ok |")
    print("|---:|---:|---:|---:|---:|---|")
    print(f"| {k['readings']:,.0f} | {k['seconds']:.1f} | {k['readings'] / k['seconds']:,.0f} "
          f"| {k['cpu']:.1f} | {k['rss_mb']:.0f} | {k['ok']} |")  # fmt: skip


if __name__ == "__main__":
    main()
