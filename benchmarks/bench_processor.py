"""Processor throughput, CPU, memory and latency against a real broker (plain script).

Starts its own single-node Kafka on free ports (deploy/kafka/kafkactl.py), pre-fills a
6-partition topic with EVENTS readings from 1,000 sensors, then measures in one run:

(a) the classic tutorial consumer: kafka-python, stdlib json, auto-commit, one event at
    a time (capped at TUTORIAL_SECONDS, rate extrapolated);
(b) a bare aiokafka ``getmany`` + ``orjson.loads`` loop (the ceiling, no processing);
(c) the full processor (at-least-once), fresh group, until it consumed everything;
then end-to-end latency p50/p99 of the processor at a fixed rate of half (c)'s rate,
and at LOW_RATE, where the machine is not saturated.

Each consumer runs in its own process so CPU seconds and peak RSS are its own.
Usage: ``uv run python benchmarks/bench_processor.py [--events N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))

PARTITIONS = 6
SENSORS = 1000
TUTORIAL_SECONDS = 15.0
LATENCY_SECONDS = 15.0
LOW_RATE = 5_000.0
"""A rate at which producer, broker and processor leave the 2 cores mostly idle."""


def payloads(count: int, base_ms: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """Readings ``start`` .. ``start + count - 1`` of the round-robin fleet."""
    from sensorstream.schema import SensorReading, encode_reading

    out = []
    for i in range(start, start + count):
        sensor = i % SENSORS
        seq = i // SENSORS
        sensor_id = f"sensor-{sensor:04d}"
        reading = SensorReading(
            schema_version=1,
            event_id=str(uuid.uuid4()),
            sensor_id=sensor_id,
            seq=seq,
            event_time=base_ms + seq * 10,
            temperature=20.0 + (i % 13),
            humidity=40.0 + (i % 17),
        )
        out.append((sensor_id.encode(), encode_reading(reading)))
    return out


def prefill(bootstrap: str, topic: str, count: int) -> float:
    from confluent_kafka import Producer

    base_ms = int(time.time() * 1000) - (count // SENSORS) * 10
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all", "enable.idempotence": True}
    )
    started = time.perf_counter()
    step = 100_000
    for start in range(0, count, step):
        # Each chunk continues the seqs of the one before (sensorstream-audit caught the
        # repeats when every chunk started again at seq 0).
        for key, value in payloads(min(step, count - start), base_ms, start):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def create_topic(bootstrap: str, topic: str) -> None:
    """The input topic as the topology declares it, under this run's name."""
    from aiokafka.admin import AIOKafkaAdminClient

    from sensorstream.runtime import RetryPolicy, ensure_topics
    from sensorstream.schema import TOPOLOGY

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            spec = TOPOLOGY.configured(partitions=PARTITIONS, names={"input": topic}).input
            await ensure_topics(admin, [spec], bootstrap=bootstrap, policy=RetryPolicy(budget=30))
        finally:
            await admin.close()

    asyncio.run(create())


# -- child modes: each prints one JSON line {events, seconds, cpu, rss_mb} -------------
def usage(events: int, seconds: float) -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    _, rss = proc_usage(os.getpid())
    return {"events": events, "seconds": seconds, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": rss}


def run_tutorial(bootstrap: str, topic: str, total: int) -> dict[str, float]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"tutorial-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        value_deserializer=lambda v: json.loads(v.decode("utf-8")),
    )
    count = 0
    started = None
    for message in consumer:
        if started is None:
            started = time.perf_counter()
        _ = message.value["temperature"]
        count += 1
        if count >= total or time.perf_counter() - started > TUTORIAL_SECONDS:
            break
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return usage(count, elapsed)


async def run_bare(bootstrap: str, topic: str, total: int) -> dict[str, float]:
    import orjson
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    count = 0
    started = None
    loads = orjson.loads
    while count < total:
        batches = await consumer.getmany(timeout_ms=500, max_records=5000)
        if started is None and batches:
            started = time.perf_counter()
        for records in batches.values():
            for record in records:
                loads(record.value)
            count += len(records)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    await consumer.stop()
    return usage(count, elapsed)


# -- the processor (a subprocess we measure through /proc and /metrics) -----------------
def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


def histogram(port: int, name: str) -> list[tuple[float, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    buckets = []
    for line in body.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append(
                (float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1]))
            )
    return buckets


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    total = buckets[-1][1]
    target = q * total
    previous_le, previous_count = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if le == float("inf"):
                return previous_le
            span = count - previous_count
            fraction = (target - previous_count) / span if span else 1.0
            return previous_le + (le - previous_le) * fraction
        previous_le, previous_count = le, count
    return previous_le


def proc_usage(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return cpu, hwm


def start_processor(bootstrap: str, topic: str, port: int, suffix: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SENSORSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "SENSORSTREAM_TOPIC": topic,
        "SENSORSTREAM_GROUP_ID": f"bench-{suffix}",
        "SENSORSTREAM_AGGREGATES_TOPIC": f"bench-agg-{suffix}",
        "SENSORSTREAM_ALERTS_TOPIC": f"bench-alerts-{suffix}",
        "SENSORSTREAM_DLQ_TOPIC": f"bench-dlq-{suffix}",
        "SENSORSTREAM_METRICS_PORT": str(port),
        "SENSORSTREAM_LOG_FORMAT": "json",
        "SENSORSTREAM_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "sensorstream.processor"], env=env)


def wait_metrics(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"processor exited {proc.returncode}")
        try:
            metric(port, "sensorstream_processor_up")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("processor did not start")


def run_processor(bootstrap: str, topic: str, total: int) -> dict[str, float]:
    import kafkactl

    port = kafkactl.free_port()
    proc = start_processor(bootstrap, topic, port, uuid.uuid4().hex[:8])
    try:
        wait_metrics(port, proc)
        name = "sensorstream_processor_events_consumed_total"
        started = None
        consumed = 0.0
        while consumed < total:
            time.sleep(0.05)
            consumed = metric(port, name)
            if started is None and consumed > 0:
                started, first = time.perf_counter(), consumed
                cpu0, _ = proc_usage(proc.pid)
        elapsed = time.perf_counter() - started  # type: ignore[operator]
        cpu, rss = proc_usage(proc.pid)
        return {
            "events": consumed - first,
            "seconds": elapsed,
            "cpu": cpu - cpu0,
            "rss_mb": rss,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# One reading as bytes with the event id's counter, sensor id, seq and event time filled
# in by %-formatting: a uuid4 + dataclass + orjson per event cost the load generator
# most of a core at 100k ev/s, which on 2 shared cores showed up as processor latency.
_TEMPLATE = (
    b'{"schema_version":1,"event_id":"%s-%012x","sensor_id":"%s","seq":%d,'
    b'"event_time":%d,"temperature":21.0,"humidity":45.0}'
)


def run_latency(bootstrap: str, rate: float) -> dict[str, float]:
    """p50/p99 of event time -> done at a fixed producer rate (new topic, fresh group).

    Also returns the CPU seconds the load generator (this process) and the processor
    spent, to tell a saturated machine from a slow processor.
    """
    import kafkactl
    from confluent_kafka import Producer

    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    port = kafkactl.free_port()
    proc = start_processor(bootstrap, topic, port, uuid.uuid4().hex[:8])
    try:
        wait_metrics(port, proc)
        time.sleep(3)  # join the group
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
        sensor_ids = [f"sensor-{i:04d}".encode() for i in range(SENSORS)]
        id_prefix = str(uuid.uuid4())[:23].encode()
        seqs = [0] * SENSORS
        produce = producer.produce
        cpu0 = time.process_time()
        proc_cpu0, _ = proc_usage(proc.pid)
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < LATENCY_SECONDS:
            due = int(elapsed * rate)
            now_ms = int(time.time() * 1000)
            while sent < due:
                sensor = sent % SENSORS
                key = sensor_ids[sensor]
                value = _TEMPLATE % (id_prefix, sent, key, seqs[sensor], now_ms)
                seqs[sensor] += 1
                while True:
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:
                        producer.poll(0.01)
                sent += 1
            producer.poll(0)
            time.sleep(0.002)
        producer.flush(30)
        generator_cpu = time.process_time() - cpu0
        time.sleep(2)
        proc_cpu, _ = proc_usage(proc.pid)
        buckets = histogram(port, "sensorstream_processor_processing_latency_seconds")
        return {
            "rate": rate,
            "p50": quantile(buckets, 0.5),
            "p99": quantile(buckets, 0.99),
            "generator_cpu": generator_cpu / LATENCY_SECONDS,
            "processor_cpu": (proc_cpu - proc_cpu0) / LATENCY_SECONDS,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def child(mode: str, bootstrap: str, topic: str, total: int) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", mode, "--bootstrap", bootstrap, "--topic", topic]
    argv += ["--events", str(total)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["tutorial", "bare"])
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic")
    args = parser.parse_args()
    if args.child == "tutorial":
        print(json.dumps(run_tutorial(args.bootstrap, args.topic, args.events)))
        return
    if args.child == "bare":
        print(json.dumps(asyncio.run(run_bare(args.bootstrap, args.topic, args.events))))
        return

    import kafkactl

    data_dir = Path(tempfile.mkdtemp(prefix="bench-processor-kafka-"))
    ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
    cluster = kafkactl.start(
        nodes=1, ports=ports[:1], controller_ports=ports[1:2], data_dir=data_dir
    )
    try:
        bootstrap = cluster.bootstrap
        topic = f"bench-input-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic)
        fill_seconds = prefill(bootstrap, topic, args.events)
        print(f"pre-filled {args.events:,} events in {fill_seconds:.1f} s", file=sys.stderr)
        results = {
            "(a) tutorial: kafka-python, json, auto-commit": child(
                "tutorial", bootstrap, topic, args.events
            ),
            "(b) bare aiokafka getmany + orjson.loads": child(
                "bare", bootstrap, topic, args.events
            ),
            "(c) sensorstream-processor, at-least-once": run_processor(
                bootstrap, topic, args.events
            ),
        }
        rates = {k: v["events"] / v["seconds"] for k, v in results.items()}
        full = rates["(c) sensorstream-processor, at-least-once"]
        latencies = [run_latency(bootstrap, full / 2), run_latency(bootstrap, LOW_RATE)]
    finally:
        kafkactl.stop(data_dir)

    print(f"\n### Processor, {args.events:,}-event backlog, {PARTITIONS} partitions\n")
    print("| consumer | events | ev/s | CPU s / 1M | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        per_million = r["cpu"] / r["events"] * 1_000_000
        row = [f"{int(r['events']):,}", f"{rates[name]:,.0f}", f"{per_million:.1f}"]
        print(f"| {name} | {' | '.join(row)} | {r['rss_mb']:.0f} |")
    tutorial = rates["(a) tutorial: kafka-python, json, auto-commit"]
    bare = rates["(b) bare aiokafka getmany + orjson.loads"]
    print(
        f"\nprocessor / tutorial = {full / tutorial:.1f}x (target >= 5x); "
        f"processor / bare = {full / bare:.2f}x (target >= 0.7x)"
    )
    columns = ["p50 ms", "p99 ms", "generator cores", "processor cores"]
    print(f"\n| end-to-end latency (event time -> done) | {' | '.join(columns)} |")
    print("|---|---|---|---|---|")
    for lat in latencies:
        label = "half the max" if lat is latencies[0] else "unsaturated"
        print(
            f"| {lat['rate']:,.0f} ev/s ({label}) | {lat['p50'] * 1000:.1f} | "
            f"{lat['p99'] * 1000:.1f} | {lat['generator_cpu']:.2f} | {lat['processor_cpu']:.2f} |"
        )
    print(
        "\nlatency: histogram interpolation; the load generator, the broker and the processor "
        "share the machine's cores"
    )


if __name__ == "__main__":
    main()
