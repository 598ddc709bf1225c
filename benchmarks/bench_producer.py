"""Maximum sustained producer throughput, ours against the usual ways, on one local broker.

Every contender produces acknowledged (acks=all, idempotent) events to its own
6-partition topic for a fixed time, in a subprocess of its own so its CPU time is
measured alone (``resource.getrusage``). Prints a markdown table.

    uv run python benchmarks/bench_producer.py [--seconds 10] [--bootstrap host:port]

Without ``--bootstrap`` it starts a broker on free ports and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))

SENSORS = 1_000
CHUNK = 1_000
CONTENDERS = {
    "ours": "sensorstream producer (batch API, no compression)",
    "ours-lz4": "sensorstream producer (batch API, lz4)",
    "confluent": "confluent-kafka (librdkafka) produce + poll(0), linger 5 ms",
    "tutorial": "(a) kafka-python send() per event, stdlib json",
    "send-and-wait": "(b) aiokafka send_and_wait() per event",
}
SLOW = {"tutorial", "send-and-wait"}
_OURS_STARTED: list[float] = []


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fleet() -> Any:
    from sensorstream.producer._simulation import SensorFleet

    return SensorFleet(SENSORS, seed=1, anomaly_probability=0.001)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _ours(bootstrap: str, topic: str, seconds: float, compression: str) -> int:
    from prometheus_client import CollectorRegistry

    from sensorstream.producer._service import ProducerService
    from sensorstream.producer.settings import ProducerSettings
    from sensorstream.runtime import StopSignal, load_settings

    settings = load_settings(
        ProducerSettings,
        ["--bootstrap-servers", bootstrap, "--topic", topic, "--rate", "max",
         "--duration", str(seconds), "--sensors", str(SENSORS), "--seed", "1",
         "--compression", compression, "--metrics-port", "0", "--log-level", "warning"],
    )  # fmt: skip
    service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    # Time from the moment the Kafka producer is up, like the other contenders.
    while service.sender is None and not run.done():  # noqa: ASYNC110 - polls a plain attribute
        await asyncio.sleep(0.005)
    started = time.monotonic()
    assert 0 == await run
    assert service.sender is not None
    _OURS_STARTED.append(started)
    return service.sender.counts.acked


def _confluent(bootstrap: str, topic: str, seconds: float) -> int:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
         "linger.ms": 5, "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    fleet = _fleet()
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, value in fleet.generate(CHUNK, _now_ms()):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
        sent += CHUNK
    if producer.flush(60) != 0:
        raise RuntimeError("confluent-kafka: events left unacknowledged")
    return sent


def _tutorial(bootstrap: str, topic: str, seconds: float) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        key_serializer=str.encode,
        value_serializer=lambda v: json.dumps(v).encode("utf-8"),
    )
    sent = 0
    seqs = [0] * SENSORS
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sensor = sent % SENSORS
        reading = {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "sensor_id": f"sensor-{sensor:04d}",
            "seq": seqs[sensor],
            "event_time": _now_ms(),
            "temperature": 21.5,
            "humidity": 40.0,
        }
        seqs[sensor] += 1
        producer.send(topic, key=reading["sensor_id"], value=reading)
        sent += 1
    producer.flush(60)
    producer.close()
    return sent


async def _send_and_wait(bootstrap: str, topic: str, seconds: float) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    fleet = _fleet()
    sent = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for key, value in fleet.generate(100, _now_ms()):
                await producer.send_and_wait(topic, value, key=key)
            sent += 100
    finally:
        await producer.stop()
    return sent


def run_contender(name: str, bootstrap: str, topic: str, seconds: float) -> dict[str, float]:
    """In this (child) process: produce for ``seconds``, return events, seconds, CPU seconds."""
    import uvloop

    cpu0, t0 = _cpu(), time.monotonic()
    if name == "ours":
        events = uvloop.run(_ours(bootstrap, topic, seconds, "none"))
    elif name == "ours-lz4":
        events = uvloop.run(_ours(bootstrap, topic, seconds, "lz4"))
    elif name == "confluent":
        events = _confluent(bootstrap, topic, seconds)
    elif name == "tutorial":
        events = _tutorial(bootstrap, topic, seconds)
    else:
        events = uvloop.run(_send_and_wait(bootstrap, topic, seconds))
    if _OURS_STARTED:
        t0 = _OURS_STARTED[0]
    return {"events": events, "seconds": time.monotonic() - t0, "cpu": _cpu() - cpu0}


async def _create_topic(bootstrap: str, name: str) -> None:
    """The input topic as the topology declares it, under this run's name."""
    from aiokafka.admin import AIOKafkaAdminClient

    from sensorstream.runtime import RetryPolicy, ensure_topics
    from sensorstream.schema import TOPOLOGY

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        spec = TOPOLOGY.configured(partitions=6, names={"input": name}).input
        await ensure_topics(admin, [spec], bootstrap=bootstrap, policy=RetryPolicy(budget=30))
    finally:
        await admin.close()


def _measure(name: str, bootstrap: str, seconds: float) -> dict[str, float]:
    topic = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(bootstrap, topic))
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--bootstrap", bootstrap,
         "--topic", topic, "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=seconds * 4 + 120, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _table(results: dict[str, dict[str, float]]) -> str:
    ours = results["ours"]["events"] / results["ours"]["seconds"]
    rows = [
        "| approach | events acked | seconds | events/s | CPU s per 1M events | ours is |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        rate = r["events"] / r["seconds"]
        rows.append(
            f"| {CONTENDERS[name]} | {int(r['events']):,} | {r['seconds']:.1f} | {rate:,.0f} | "
            f"{r['cpu'] / r['events'] * 1e6:.1f} | {ours / rate:.1f}x |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per contender")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_contender(args.child, args.bootstrap, args.topic, args.seconds)))
        return 0

    import kafkactl

    data_dir = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-producer-kafka-"))
        ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
        cluster = kafkactl.start(
            ports=ports[:1], controller_ports=ports[1:], data_dir=data_dir, heap="1g"
        )
        bootstrap = cluster.bootstrap
    try:
        results = {}
        for name in CONTENDERS:
            seconds = min(args.seconds, 10.0) if name in SLOW else args.seconds
            results[name] = _measure(name, bootstrap, seconds)
            print(f"measured {name}", file=sys.stderr)
    finally:
        if data_dir is not None:
            kafkactl.stop(data_dir)
    print(f"acks=all, idempotent, 6 partitions, {SENSORS:,} sensors, one local broker\n")
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
