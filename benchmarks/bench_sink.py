"""Sink throughput and CPU, Kafka -> committed in PostgreSQL (plain script).

Starts its own single-node Kafka (deploy/kafka/kafkactl.py) and PostgreSQL
(deploy/postgres/pgctl.py) on free ports, pre-fills a 6-partition aggregates topic with
ROWS window aggregates (1,000 sensors, every one a new window) and an alerts topic with
a tenth as many alerts, then measures, each into a fresh database:

(a) the naive baseline: aiokafka ``getmany``, then one ``INSERT ... ON CONFLICT DO
    NOTHING`` per row in autocommit (one transaction per row), offsets committed after
    each fetch (capped at BASELINE_SECONDS, rate extrapolated);
(b) ``sensorstream-sink``: batches of 5,000, binary COPY into staging tables, one upsert
    per table and batch, one transaction, offsets committed after the database commit;
(c) the sink again with a new group on (b)'s database: a full replay, every row found
    identical (what a crash's replay costs).

Rows/s counts rows committed in PostgreSQL from the first consumed record on. CPU is
reported for the client process and for the PostgreSQL server (all its processes), per
million rows: with both on the same two cores, both decide the rate.
Usage: ``uv run python benchmarks/bench_sink.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
sys.path.insert(0, str(ROOT / "deploy" / "postgres"))

PARTITIONS = 6
SENSORS = 1000
BASELINE_SECONDS = 15.0
WINDOW_MS = 10_000


# --------------------------------------------------------------------------- data


def prefill(bootstrap: str, aggregates: str, alerts: str, rows: int) -> float:
    """``rows`` distinct aggregates (and rows // 10 alerts), keyed by sensor."""
    from confluent_kafka import Producer

    from sensorstream.schema import Alert, WindowAggregate, encode_aggregate, encode_alert

    base = int(time.time() * 1000) // WINDOW_MS * WINDOW_MS - (rows // SENSORS + 1) * WINDOW_MS
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    started = time.perf_counter()

    def send(topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    for i in range(rows):
        sensor, window = i % SENSORS, i // SENSORS
        sensor_id = f"sensor-{sensor:04d}"
        start = base + window * WINDOW_MS
        agg = WindowAggregate(
            sensor_id=sensor_id,
            window_start=start,
            window_end=start + WINDOW_MS,
            count=10,
            temperature_min=20.0,
            temperature_max=20.0 + i % 7,
            temperature_mean=21.5,
            humidity_min=40.0,
            humidity_max=40.0 + i % 11,
            humidity_mean=44.0,
            first_seq=window * 10,
            last_seq=window * 10 + 9,
        )
        send(aggregates, sensor_id.encode(), encode_aggregate(agg))
        if i % 10 == 0:
            alert = Alert(
                sensor_id=sensor_id,
                kind="temperature_high",
                value=46.0,
                threshold=45.0,
                event_time=start + 5,
                event_id=str(uuid.uuid4()),
            )
            send(alerts, sensor_id.encode(), encode_alert(alert))
    producer.flush(60)
    return time.perf_counter() - started


def create_topics(bootstrap: str, names: dict[str, str]) -> None:
    """The aggregates and alerts topics as the topology declares them, under these names."""
    from aiokafka.admin import AIOKafkaAdminClient

    from sensorstream.runtime import RetryPolicy, ensure_topics
    from sensorstream.schema import TOPOLOGY

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topology = TOPOLOGY.configured(partitions=PARTITIONS, names=names)  # type: ignore[arg-type]
            specs = [topology.aggregates, topology.alerts]
            await ensure_topics(admin, specs, bootstrap=bootstrap, policy=RetryPolicy(budget=30))
        finally:
            await admin.close()

    asyncio.run(create())


# --------------------------------------------------------------------------- measuring


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(server: Any) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and every child of it, including
    exited children (cutime/cstime) so short-lived backends count too."""
    postmaster = int((server.pgdata / "postmaster.pid").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15]) / ticks
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == postmaster:
            total += (int(stat[11]) + int(stat[12])) / ticks
    return total


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


async def new_database(server: Any) -> str:
    import asyncpg
    import pgctl

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=pgctl.SUPERUSER,
        password=server.superuser_password,
        database="postgres",
    )
    try:
        await admin.execute(f"CREATE DATABASE {name} OWNER {server.user}")
    finally:
        await admin.close()
    return name


# --------------------------------------------------------------------------- (a) naive

_NAIVE_SCHEMA = """
CREATE TABLE aggregates (
    sensor_id text NOT NULL, window_start timestamptz NOT NULL, window_end timestamptz NOT NULL,
    count integer NOT NULL, temperature_min float8, temperature_max float8,
    temperature_mean float8, humidity_min float8, humidity_max float8, humidity_mean float8,
    first_seq bigint, last_seq bigint, PRIMARY KEY (sensor_id, window_start));
CREATE TABLE alerts (
    event_id uuid NOT NULL, kind text NOT NULL, sensor_id text NOT NULL,
    event_time timestamptz NOT NULL, value float8, threshold float8,
    PRIMARY KEY (event_id, kind));
"""
_NAIVE_AGGREGATE = """
INSERT INTO aggregates VALUES ($1, to_timestamp($2 / 1000.0), to_timestamp($3 / 1000.0),
    $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING
"""
_NAIVE_ALERT = """
INSERT INTO alerts VALUES ($1::uuid, $2, $3, to_timestamp($4 / 1000.0), $5, $6)
ON CONFLICT DO NOTHING
"""


async def run_naive(args: argparse.Namespace) -> dict[str, float]:
    """One INSERT per row, autocommit; a child process, so its CPU is its own."""
    import asyncpg
    import orjson
    from aiokafka import AIOKafkaConsumer

    conn = await asyncpg.connect(args.dsn)
    await conn.execute(_NAIVE_SCHEMA)
    consumer = AIOKafkaConsumer(
        args.aggregates,
        args.alerts,
        bootstrap_servers=args.bootstrap,
        group_id=f"naive-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    rows, started = 0, None
    cpu0 = 0.0
    try:
        while rows < args.total:
            batches = await consumer.getmany(timeout_ms=500)
            if started is None and batches:
                started, cpu0 = time.perf_counter(), time.process_time()
            for tp, records in batches.items():
                for record in records:
                    v = orjson.loads(record.value)
                    if tp.topic == args.aggregates:
                        await conn.execute(
                            _NAIVE_AGGREGATE, v["sensor_id"], v["window_start"],
                            v["window_end"], v["count"], v["temperature_min"],
                            v["temperature_max"], v["temperature_mean"], v["humidity_min"],
                            v["humidity_max"], v["humidity_mean"], v["first_seq"],
                            v["last_seq"],
                        )  # fmt: skip
                    else:
                        await conn.execute(
                            _NAIVE_ALERT, v["event_id"], v["kind"], v["sensor_id"],
                            v["event_time"], v["value"], v["threshold"],
                        )  # fmt: skip
                    rows += 1
            await consumer.commit()
            if started is not None and time.perf_counter() - started > BASELINE_SECONDS:
                break
    finally:
        await consumer.stop()
        await conn.close()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    return {"rows": rows, "seconds": elapsed, "cpu": time.process_time() - cpu0}


def naive(server: Any, bootstrap: str, topics: dict[str, str], total: int) -> dict[str, float]:
    database = asyncio.run(new_database(server))
    dsn = server.url(database=database, with_password=True)
    argv = [sys.executable, __file__, "--child", "naive", "--bootstrap", bootstrap]
    argv += ["--aggregates", topics["aggregates"], "--alerts", topics["alerts"]]
    argv += ["--dsn", dsn, "--rows", str(total)]
    pg0 = server_cpu(server)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["pg_cpu"] = server_cpu(server) - pg0
    return result


# --------------------------------------------------------------------------- (b), (c) the sink


def sink(
    server: Any, bootstrap: str, topics: dict[str, str], total: int, database: str
) -> dict[str, float]:
    """A sensorstream-sink subprocess from the first consumed record to ``total`` rows
    committed (inserted, or found identical on a replay)."""
    import kafkactl

    port = kafkactl.free_port()
    env = {
        **os.environ,
        **server.sink_environment(),
        "SENSORSTREAM_DATABASE_NAME": database,
        "SENSORSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "SENSORSTREAM_AGGREGATES_TOPIC": topics["aggregates"],
        "SENSORSTREAM_ALERTS_TOPIC": topics["alerts"],
        "SENSORSTREAM_GROUP_ID": f"bench-sink-{uuid.uuid4().hex[:8]}",
        "SENSORSTREAM_METRICS_PORT": str(port),
        "SENSORSTREAM_LOG_FORMAT": "json",
        "SENSORSTREAM_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "sensorstream.sink"], env=env)
    done_names = (
        "sensorstream_sink_rows_written_total",
        "sensorstream_sink_upsert_conflicts_total",
    )
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"sink exited {proc.returncode}")
            try:
                metric(port, "sensorstream_sink_up")
                break
            except OSError:
                time.sleep(0.1)
        started = None
        cpu0 = pg0 = 0.0
        while True:
            time.sleep(0.02)
            if started is None and metric(port, "sensorstream_sink_records_consumed_total") > 0:
                started, cpu0, pg0 = time.perf_counter(), proc_cpu(proc.pid), server_cpu(server)
            done = sum(metric(port, name) for name in done_names)
            if done >= total:
                break
        elapsed = time.perf_counter() - started  # type: ignore[operator]
        return {
            "rows": done,
            "seconds": elapsed,
            "cpu": proc_cpu(proc.pid) - cpu0,
            "pg_cpu": server_cpu(server) - pg0,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="aggregates to pre-fill")
    parser.add_argument("--child", choices=["naive"])
    parser.add_argument("--bootstrap")
    parser.add_argument("--aggregates")
    parser.add_argument("--alerts")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    if args.child == "naive":
        args.total = args.rows
        print(json.dumps(asyncio.run(run_naive(args))))
        return

    import kafkactl
    import pgctl

    kafka_dir = Path(tempfile.mkdtemp(prefix="bench-sink-kafka-"))
    pg_base = Path(tempfile.mkdtemp(prefix="bench-sink-pg-"))
    pg_base.chmod(0o755)  # run as root, the server's own user must enter it
    ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
    cluster = kafkactl.start(
        nodes=1, ports=ports[:1], controller_ports=ports[1:2], data_dir=kafka_dir
    )
    try:
        server = pgctl.start(pg_base / "pg", port=pgctl.stable_free_port())
        bootstrap = cluster.bootstrap
        suffix = uuid.uuid4().hex[:8]
        topics = {"aggregates": f"bench-agg-{suffix}", "alerts": f"bench-alerts-{suffix}"}
        create_topics(bootstrap, topics)
        fill = prefill(bootstrap, topics["aggregates"], topics["alerts"], args.rows)
        total = args.rows + (args.rows + 9) // 10
        print(f"pre-filled {total:,} records in {fill:.1f} s", file=sys.stderr)
        database = asyncio.run(new_database(server))
        results = {
            "(a) naive: one INSERT per row, autocommit": naive(server, bootstrap, topics, total),
            "(b) sensorstream-sink: COPY + upsert per batch": sink(
                server, bootstrap, topics, total, database
            ),
            "(c) sensorstream-sink, replay (all identical)": sink(
                server, bootstrap, topics, total, database
            ),
        }
    finally:
        pgctl.stop(pg_base / "pg", mode="fast")
        kafkactl.stop(kafka_dir)
        shutil.rmtree(pg_base, ignore_errors=True)
        shutil.rmtree(kafka_dir, ignore_errors=True)

    print(f"\n### Sink, {total:,}-record backlog ({args.rows:,} aggregates + alerts), "
          f"{PARTITIONS} partitions\n")  # fmt: skip
    print("| writer | rows | rows/s | client CPU s / 1M | PostgreSQL CPU s / 1M |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        per_million = 1_000_000 / r["rows"] if r["rows"] else 0.0
        print(
            f"| {name} | {int(r['rows']):,} | {r['rows'] / r['seconds']:,.0f} | "
            f"{r['cpu'] * per_million:.1f} | {r['pg_cpu'] * per_million:.1f} |"
        )


if __name__ == "__main__":
    main()
