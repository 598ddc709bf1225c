"""The whole path, for real: simulated devices -> Mosquitto -> bridge -> Kafka -> processor
-> Kafka -> sink -> PostgreSQL, with the bridge and then the sink killed with SIGKILL
mid-stream and started again.

The accounting is per sensor and per ``seq``: each reading the devices published must be
in exactly one window stored in PostgreSQL (the stored windows' seq ranges tile it, each
window's count equal to its span) or, if it came too late for its window, in the DLQ
with reason ``late_event``: nothing lost, nothing counted twice, no partial window. The
bad payloads the devices mix in are in the DLQ with the MQTT topic they came on, and
every alert the processor raised is stored once.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from processor_support import (
    ALERTING,
    Topics,
    make_input,
    read_alerts,
    start_processor,
    wait_until,
)
from sink_support import SinkDatabase, commits_ahead_of_database, start_sink, wait_for_database

from kafka_helpers import consume_all
from sensorstream.schema import DeadLetterHeaders, SensorReading, WindowAggregate, decode_reading

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bridge"))
sys.path.insert(0, str(HERE.parents[2] / "deploy" / "mqtt"))

import mosquittoctl  # noqa: E402
from bridge_support import BridgeTarget, start_bridge, start_devices  # noqa: E402

from sensorstream.bridge import MQTT_TOPIC_HEADER  # noqa: E402

SENSORS = 12
PER_SENSOR = 400
READINGS = SENSORS * PER_SENSOR
POISON_EVERY = 400
POISON = READINGS // POISON_EVERY
RATE = 600.0  # about 8 s of publishing: time for both kills while it flows


@pytest.fixture
def mqtt_port(tmp_path: Path) -> Iterator[int]:
    """A Mosquitto broker of this test's own; its port."""
    data_dir = tmp_path / "mosquitto"
    atexit.register(mosquittoctl.stop, data_dir, hard=True)
    broker = mosquittoctl.start(data_dir, port=mosquittoctl.stable_free_port())
    try:
        yield broker.port
    finally:
        mosquittoctl.stop(data_dir, hard=True)


def stored_seq_accounting(
    windows: dict[str, list[WindowAggregate]],
    late: dict[str, set[int]],
    published: dict[str, set[int]],
) -> dict[str, dict[str, list[object]]]:
    """Per sensor, what is wrong: seqs in no stored window and not dead-lettered as late
    (``lost``), seqs in two windows or both stored and dead-lettered (``duplicated``), and
    windows whose count is not their seq span (``partial``). Empty when all is well."""
    report: dict[str, dict[str, list[object]]] = {}
    for sensor in sorted(set(published) | set(windows)):
        covered: Counter[int] = Counter()
        partial: list[object] = []
        for agg in windows.get(sensor, []):
            assert agg.first_seq is not None
            assert agg.last_seq is not None
            span = range(agg.first_seq, agg.last_seq + 1)
            covered.update(s for s in span if s not in late.get(sensor, set()))
            if agg.count != len(span) - len(late.get(sensor, set()) & set(span)):
                partial.append((agg.window_start, agg.count, agg.first_seq, agg.last_seq))
        late_here = late.get(sensor, set())
        entry: dict[str, list[object]] = {}
        lost = sorted(published.get(sensor, set()) - set(covered) - late_here)
        duplicated = sorted(s for s, n in covered.items() if n > 1) + sorted(
            late_here & set(covered)
        )
        if lost:
            entry["lost"] = lost[:20]
        if duplicated:
            entry["duplicated"] = duplicated[:20]
        if partial:
            entry["partial"] = partial[:5]
        if entry:
            report[sensor] = entry
    return report


async def test_devices_to_postgres_through_kill_9_of_bridge_and_sink(
    kafka_bootstrap: str, mqtt_port: int, sink_db: SinkDatabase, tmp_path: Path
) -> None:
    topics = Topics.fresh("edges")
    await make_input(kafka_bootstrap, topics, partitions=3)
    target = BridgeTarget.fresh(kafka_bootstrap, mqtt_port, topic=topics.input, dlq=topics.dlq)
    small = {"SENSORSTREAM_BATCH_SIZE": "100", "SENSORSTREAM_BATCH_TIME": "0.1"}
    processor = start_processor(kafka_bootstrap, topics, tmp_path, **ALERTING)
    bridges = [start_bridge(target, tmp_path)]
    sinks = [start_sink(kafka_bootstrap, topics, sink_db, tmp_path, **small)]
    devices = None
    try:
        await asyncio.gather(
            processor.wait_ready(), bridges[0].wait_ready(), sinks[0].wait_ready(within=60)
        )
        devices = start_devices(
            target,
            tmp_path,
            sensors=SENSORS,
            count=READINGS,
            rate=RATE,
            poison_every=POISON_EVERY,
            sensor_prefix="device-",
        )
        await wait_until(
            lambda: bridges[0].metric_async("sensorstream_bridge_messages_acked_total"),
            lambda acked: acked >= READINGS // 4,
            within=60,
            what="the first bridge acknowledging a quarter of the readings",
        )
        bridges[0].kill()
        await asyncio.sleep(1.0)  # the devices go on publishing: Mosquitto queues it
        bridges.append(start_bridge(target, tmp_path))
        await bridges[1].wait_ready()
        await wait_until(
            sink_db.total_count,
            lambda stored: stored >= READINGS // 2,
            within=60,
            what="the first sink storing half of the readings",
        )
        sinks[0].kill()
        await asyncio.sleep(1.0)
        sinks.append(start_sink(kafka_bootstrap, topics, sink_db, tmp_path, **small))
        await sinks[1].wait_ready(within=60)
        final = await devices.wait()
        assert (READINGS, POISON) == (final["readings"], final["poison"])

        published: dict[str, set[int]] = defaultdict(set)
        for record in await consume_all(kafka_bootstrap, topics.input, timeout=60):
            decoded = decode_reading(record.value or b"")
            if isinstance(decoded, SensorReading) and decoded.seq is not None:
                published[decoded.sensor_id].add(decoded.seq)
        late: dict[str, set[int]] = defaultdict(set)
        refused: Counter[str] = Counter()  # the bad payloads: has it the MQTT topic?
        for record in await consume_all(kafka_bootstrap, topics.dlq, timeout=30):
            headers = DeadLetterHeaders.from_kafka_headers(record.headers)
            decoded = decode_reading(record.value or b"")
            if headers.reason.value == "late_event" and isinstance(decoded, SensorReading):
                assert decoded.seq is not None
                late[decoded.sensor_id].add(decoded.seq)
            else:
                refused[str(MQTT_TOPIC_HEADER in dict(record.headers))] += 1
        late_total = sum(len(seqs) for seqs in late.values())
        await wait_for_database(kafka_bootstrap, topics, sink_db, READINGS - late_total)
        ahead = await commits_ahead_of_database(kafka_bootstrap, sinks[1].group, sink_db)
        assert 0 == await sinks[1].terminate()
    finally:
        if devices is not None:
            devices.stop()
        for proc in (processor, *sinks):
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait(10)
        for bridge in bridges:
            if bridge.proc.poll() is None:
                bridge.kill()

    windows = await sink_db.windows()
    expected = {f"device-{i:04d}": set(range(PER_SENSOR)) for i in range(SENSORS)}
    accounting = stored_seq_accounting(windows, late, published)
    stored = sum(w.count for aggs in windows.values() for w in aggs)
    tally = {
        kind: sum(len(entry.get(kind, [])) for entry in accounting.values())
        for kind in ("lost", "duplicated", "partial")
    }
    print(
        f"devices -> postgres: {READINGS} published by {SENSORS} sensors, {stored} in stored "
        f"windows, {late_total} late (DLQ), {POISON} bad payloads; seq accounting: {tally}"
    )
    # Every seq reached Kafka once (the bridge's promise), then PostgreSQL once (the rest).
    assert expected == dict(published)
    assert {} == accounting
    assert READINGS == stored + late_total
    # The bad payloads were refused at the bridge, with the MQTT topic they came on.
    assert {"True": POISON} == dict(refused)
    # Every alert the processor raised is stored once; no stored row was rewritten.
    assert sorted(set(await read_alerts(kafka_bootstrap, topics.alerts))) == await sink_db.alerts()
    assert (0, []) == (await sink_db.revised(), ahead)
