"""MQTT -> Kafka bridge throughput: ours against a naive bridge, on local Mosquitto and Kafka.

A message counts once Kafka acknowledged its record (acks=all, idempotent) *and* the bridge
sent its PUBACK. Each contender gets its own MQTT session, preloaded with readings from
``sensorstream-mqtt-devices`` while no bridge is connected (so the device simulator's
speed is out of the measurement), then drains it in a subprocess of its own so its CPU
time is measured alone (``resource.getrusage``, from its first message to its last ack):

- ours: ``sensorstream-mqtt-bridge`` (rounds of batches per partition, acks in order as
  Kafka acknowledges);
- naive: the same MQTT glue and validation, but one ``send_and_wait`` per message and
  its PUBACK right after (the obvious loop).

    uv run python benchmarks/bench_bridge.py [--messages 200000] [--naive-seconds 15]

It starts a Kafka broker (``deploy/kafka/kafkactl.py``) and a Mosquitto broker
(``deploy/mqtt/mosquittoctl.py``) on free ports and stops them at the end. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
sys.path.insert(0, str(ROOT / "deploy" / "mqtt"))

SENSORS = 1_000
CONTENDERS = {
    "ours": "sensorstream-mqtt-bridge (batches per partition, in-order acks)",
    "naive": "naive: send_and_wait() per message, then its PUBACK",
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _argv(bootstrap: str, mqtt_port: int, client_id: str, prefix: str, topic: str) -> list[str]:
    return [
        "--bootstrap-servers", bootstrap, "--mqtt-port", str(mqtt_port),
        "--mqtt-client-id", client_id, "--mqtt-topic", f"{prefix}/+/readings",
        "--topic", topic, "--dlq-topic", f"{topic}.dlq", "--metrics-port", "0",
        "--log-level", "warning",
    ]  # fmt: skip


async def _ours(argv: list[str], expected: int, seconds: float) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    from sensorstream.bridge._service import BridgeService
    from sensorstream.bridge.settings import BridgeSettings
    from sensorstream.runtime import StopSignal, load_settings

    settings = load_settings(BridgeSettings, argv)
    stop = StopSignal()
    service = BridgeService(settings, stop, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    while service.forwarder is None or service.forwarder.received == 0:
        assert not run.done(), "the bridge stopped before its first message"
        await asyncio.sleep(0.001)
    started, cpu = time.monotonic(), _cpu()
    forwarder = service.forwarder
    deadline = started + seconds
    while forwarder.acked < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    elapsed, used = time.monotonic() - started, _cpu() - cpu
    acked = forwarder.acked
    stop.request("done")
    assert 0 == await run
    reconnects = sum(
        s.value
        for m in service.metrics.mqtt_reconnects.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    return {
        "messages": acked,
        "seconds": elapsed,
        "cpu": used,
        "duplicates": forwarder.duplicates,
        "abandoned": forwarder.abandoned,
        "reconnects": reconnects,
    }


async def _naive(argv: list[str], expected: int, seconds: float) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer

    from sensorstream.bridge._mqtt import PROTOCOLS, MqttLink, connect_call, new_client
    from sensorstream.bridge.settings import BridgeSettings
    from sensorstream.runtime import load_settings
    from sensorstream.schema import SensorReading, decode_reading

    settings = load_settings(BridgeSettings, argv)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_list, acks="all", enable_idempotence=True
    )
    await producer.start()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    client = new_client(
        settings.mqtt_client_id,
        protocol=PROTOCOLS[settings.mqtt_protocol],
        username=None,
        password=None,
        manual_ack=True,
    )
    link = MqttLink(client, where=settings.mqtt_address, on_message=inbox.put_nowait)
    call = connect_call(
        client, settings.mqtt_host, settings.mqtt_port, keepalive=30, properties=None
    )
    await link.open(call, timeout=10)
    await link.subscribe(settings.mqtt_topic, timeout=10)
    message = await inbox.get()
    started, cpu = time.monotonic(), _cpu()
    acked = 0
    deadline = started + seconds
    while True:
        # The obvious loop: validate, produce, wait for Kafka, acknowledge, next.
        decoded = decode_reading(message.payload)
        assert type(decoded) is SensorReading
        await producer.send_and_wait(
            settings.topic, message.payload, key=decoded.sensor_id.encode()
        )
        link.ack(message.mid)
        acked += 1
        if acked >= expected or time.monotonic() >= deadline:
            break
        message = await inbox.get()
    elapsed, used = time.monotonic() - started, _cpu() - cpu
    await link.close()
    await producer.stop()
    return {"messages": acked, "seconds": elapsed, "cpu": used}


async def _create_topic(bootstrap: str, name: str) -> None:
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


def _register_session(mqtt_port: int, client_id: str, prefix: str) -> None:
    """Subscribe once with a persistent session, so the broker queues what comes next."""

    async def register() -> None:
        from sensorstream.bridge._mqtt import PROTOCOLS, MqttLink, connect_call, new_client

        client = new_client(
            client_id, protocol=PROTOCOLS["3.1.1"], username=None, password=None, manual_ack=True
        )
        link = MqttLink(client, where=f"127.0.0.1:{mqtt_port}", on_message=lambda _m: None)
        await link.open(
            connect_call(client, "127.0.0.1", mqtt_port, keepalive=30, properties=None),
            timeout=10,
        )
        await link.subscribe(f"{prefix}/+/readings", timeout=10)
        await link.close()

    asyncio.run(register())


def _preload(mqtt_port: int, prefix: str, count: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "sensorstream.bridge._devices", "--mqtt-port", str(mqtt_port),
         "--mqtt-client-id", f"bench-devices-{uuid.uuid4().hex[:8]}", "--sensors", str(SENSORS),
         "--rate", "1000000", "--count", str(count), "--seed", "1", "--log-level", "warning",
         "--topic-template", f"{prefix}/{{sensor_id}}/readings", "--drain-timeout", "120"],
        check=True, timeout=600, env={**os.environ, "SENSORSTREAM_LOG_FORMAT": "json"},
    )  # fmt: skip


def _measure(
    name: str, bootstrap: str, mqtt_port: int, messages: int, seconds: float
) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    client_id, prefix, topic = f"bench-{name}-{tag}", f"bench-{tag}", f"bench-{name}-{tag}"
    asyncio.run(_create_topic(bootstrap, topic))
    _register_session(mqtt_port, client_id, prefix)
    _preload(mqtt_port, prefix, messages)
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--messages", str(messages),
         "--child-seconds", str(seconds), "--",
         *_argv(bootstrap, mqtt_port, client_id, prefix, topic)],
        capture_output=True, text=True, timeout=seconds * 4 + 180, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _table(results: dict[str, dict[str, float]]) -> str:
    ours = results["ours"]["messages"] / results["ours"]["seconds"]
    rows = [
        "| bridge | messages acked | seconds | messages/s | CPU s per 1M messages | ours is "
        "| redeliveries |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        rate = r["messages"] / r["seconds"]
        rows.append(
            f"| {CONTENDERS[name]} | {int(r['messages']):,} | {r['seconds']:.1f} | {rate:,.0f} "
            f"| {r['cpu'] / r['messages'] * 1e6:.1f} | {ours / rate:.1f}x "
            f"| {int(r.get('duplicates', 0)):,} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="preloaded for ours")
    parser.add_argument("--naive-seconds", type=float, default=15.0, help="naive's time budget")
    parser.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--child-seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runner = _ours if args.child == "ours" else _naive
        result = asyncio.run(runner(args.argv, args.messages, args.child_seconds))
        print(json.dumps(result))
        return 0

    import kafkactl
    import mosquittoctl

    kafka_dir = Path(tempfile.mkdtemp(prefix="bench-bridge-kafka-"))
    mqtt_dir = Path(tempfile.mkdtemp(prefix="bench-bridge-mosquitto-"))
    ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
    try:
        cluster = kafkactl.start(
            ports=ports[:1], controller_ports=ports[1:], data_dir=kafka_dir, heap="1g"
        )
        broker = mosquittoctl.start(mqtt_dir, port=mosquittoctl.stable_free_port())
        results = {
            "ours": _measure("ours", cluster.bootstrap, broker.port, args.messages, 300.0),
            "naive": _measure(
                "naive",
                cluster.bootstrap,
                broker.port,
                min(args.messages, int(args.naive_seconds * 5_000)),
                args.naive_seconds,
            ),
        }
    finally:
        mosquittoctl.stop(mqtt_dir, hard=True)
        kafkactl.stop(kafka_dir)
    print(
        f"MQTT 3.1.1 QoS 1 -> Kafka acks=all, idempotent, 6 partitions, {SENSORS:,} sensors, "
        "local Mosquitto and Kafka on the same 2 cores; CPU is the bridge's own\n"
    )
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
