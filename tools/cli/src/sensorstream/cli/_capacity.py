"""``sensorstream capacity``: partitions, processor replicas, producers and brokers for a rate.

A capacity model built from what we measured: the CPU our producer and processor spend
per event (``docs/performance.md``), the size of one reading as Kafka stores it, and
stated assumptions about Kafka (per-partition write throughput, a broker's disk and
network). Every number it rests on is a :class:`Constant` in :data:`CONSTANTS` below,
with its source; ``docs/capacity.md`` explains them and holds the table
``sensorstream capacity --markdown`` prints (a unit test keeps the two equal).

Nothing here talks to Kafka. Exit statuses: 0 done; 2 a bad option.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer

from ._connection import EXIT_OK, fail
from ._topics import JsonOption

__all__ = [
    "CONSTANTS",
    "DEFAULT_RATES",
    "HEADROOM",
    "Constant",
    "Plan",
    "capacity",
    "parse_rate",
    "plan",
    "processor_replica_events_per_second",
    "render_json",
    "render_markdown",
    "render_text",
]


@dataclass(frozen=True, slots=True)
class Constant:
    """One number of the model: its value, unit and where it comes from."""

    name: str
    value: float
    unit: str
    source: str


# --------------------------------------------------------------------------- the numbers
# The only place the model's numbers live. Measured figures are maxima; the model runs
# everything at HEADROOM of them.

HEADROOM = 0.7
"""Plan to run every resource at no more than 70 % of its measured (or assumed) maximum:
room for bursts, a replica's restart and rebalance, a broker's failover, and the noise in
our measurements."""

PROCESSOR_CPU_SECONDS_PER_MILLION = 3.75
"""docs/performance.md, "Tracing (2026-12-02)", row "processor, 1M-event backlog", column
"off": 3.75 CPU s per 1M events (`uv run python benchmarks/bench_tracing.py --parts
processor --modes off`, median of 4). The most recent and the highest of our figures for
the current code: "After the robustness work (2026-12-01)" has 3.4-3.5 (`make bench`,
`benchmarks/bench_processor.py`), 2026-11-27 has 2.8. At-least-once, the full pipeline;
a user handler adds its own cost."""

PROCESSOR_CORES_PER_REPLICA = 1.0
"""A replica is one asyncio process (one thread does the work), so it uses at most one
core: the 2026-12-01 rows show 283,644-292,486 ev/s at 3.4-3.5 CPU s per 1M, i.e. one
core busy. The Helm chart's limit is also 1 CPU."""

PRODUCER_CPU_SECONDS_PER_MILLION = 4.5
"""docs/performance.md, "Tracing (2026-12-02)", row "producer at --rate max", column
"off": 4.5 CPU s per 1M events acknowledged (`uv run python benchmarks/bench_tracing.py
--parts producer --modes off`, median of 4). The highest of our figures: 2026-12-01's
"producer / librdkafka" row has 3.7, the 2026-11-27 Producer table 2.7. acks=all,
idempotent, no compression (lz4 costs 4.8 CPU s per 1M at 2026-11-27's 2.7)."""

PRODUCER_CORES_PER_INSTANCE = 1.0
"""One asyncio process, like the processor: 234k ev/s x 4.5 CPU s per 1M = 1.05 cores."""

RECORD_BYTES = 193
"""A reading as Kafka stores it: 168-170 bytes of JSON value, an 11-13 byte key (the
sensor id), the record's own framing and its share of the batch header, uncompressed and
without headers (tracing adds a traceparent header per record when on). Measured with
aiokafka's DefaultRecordBatchBuilder on SensorFleet readings in full 128 KiB batches (the
producer's batch.size): 189.0 bytes per record for 1,000 sensors, 191.0 for 100,000,
193.0 for 1,000,000 (longer ids); we take the largest. tests/unit/cli/test_capacity.py
measures it again and fails if a reading grows past this."""

PARTITION_WRITE_BYTES_PER_SECOND = 10_000_000
"""Assumed write throughput of one partition, 10 MB/s: the conservative per-partition
figure of the usual sizing rule (partitions = max(t/p, t/c); Confluent, "How to choose
the number of topics/partitions in a Kafka cluster?", 2015: "10s of MB/sec" on one
partition; Dattell, "Kafka optimization: how many partitions are needed?": "conservatively
... 10 MB/s"). Our broker on 2 shared cores took 13.3 MB/s per partition (the row below)."""

PARTITION_RECORDS_PER_SECOND = 70_107
"""Records per second one partition took in our own measurement: docs/performance.md,
Producer table (2026-11-27), confluent-kafka row, 420,646 ev/s to a 6-partition topic on
one broker sharing 2 cores with the client (`uv run python benchmarks/bench_producer.py`):
420,646 / 6 = 70,107. A lower bound of the broker's limit (the machine was the limit), so
conservative."""

REPLICATION_FACTOR = 3
"""The replication factor we run in production and in the chaos suite (with
min.insync.replicas 2, docs/reliability.md): every byte is written to three brokers."""

INPUT_CONSUMER_GROUPS = 2
"""Readers of the input topic: the processors' group and sensorstream-audit --follow."""

TOPICS = 4
"""Input, aggregates, alerts, DLQ; all four get the same partition count (topology.toml)."""

BROKER_DISK_WRITE_BYTES_PER_SECOND = 125_000_000
"""Assumed sustained disk write of one broker, 125 MB/s: the baseline throughput of an
AWS EBS gp3 volume (125 MiB/s, AWS EBS volume types documentation), a common broker disk.
A broker's disk write equals its network in (leader and follower copies)."""

BROKER_NETWORK_BYTES_PER_SECOND = 125_000_000
"""Assumed network of one broker per direction, 125 MB/s: a 1 Gbit/s interface."""

BROKER_PARTITION_REPLICAS = 4_000
"""Partition replicas one broker should hold, 4,000: Confluent, "Apache Kafka Supports
200K Partitions Per Cluster" (2018), recommends up to 4,000 partitions per broker."""

MIN_PARTITIONS = 6
"""The topology's default partition count (topology.toml, PARTITIONS)."""

MIN_PROCESSOR_REPLICAS = 2
"""Two replicas at least, so that one replica's loss (a crash, a node drain, a rolling
update) moves its partitions to a running replica instead of stopping processing."""

PARTITION_SCALE_OUT = 2
"""Partitions at least twice the planned replicas: the partition count caps the replicas
and cannot be raised later without moving sensors to other partitions, so leave room to
double the processors (a backlog to drain, a burst, a costlier handler)."""

DRAIN_SECONDS = 300
"""The scaling signal's target: today's lag drained within 5 minutes (the recording rule
sensorstream:processor_recommended_replicas in deploy/prometheus/sensorstream.rules.yml)."""

DEFAULT_RATES = (10_000, 100_000, 1_000_000)
"""Rates of docs/capacity.md's table, and of ``sensorstream capacity`` without --rate."""

CONSTANTS: tuple[Constant, ...] = (
    Constant("headroom", HEADROOM, "fraction of a maximum", "chosen"),
    Constant(
        "processor_cpu_seconds_per_million",
        PROCESSOR_CPU_SECONDS_PER_MILLION,
        "CPU s per 1M events",
        "docs/performance.md, Tracing (2026-12-02), processor 1M-event backlog, off",
    ),
    Constant(
        "processor_cores_per_replica",
        PROCESSOR_CORES_PER_REPLICA,
        "cores",
        "one asyncio process; docs/performance.md 2026-12-01 rows",
    ),
    Constant(
        "producer_cpu_seconds_per_million",
        PRODUCER_CPU_SECONDS_PER_MILLION,
        "CPU s per 1M events",
        "docs/performance.md, Tracing (2026-12-02), producer at --rate max, off",
    ),
    Constant(
        "producer_cores_per_instance",
        PRODUCER_CORES_PER_INSTANCE,
        "cores",
        "one asyncio process",
    ),
    Constant(
        "record_bytes",
        RECORD_BYTES,
        "bytes per record",
        "measured: SensorFleet readings in aiokafka v2 batches, 1M sensors",
    ),
    Constant(
        "partition_write_bytes_per_second",
        PARTITION_WRITE_BYTES_PER_SECOND,
        "bytes/s",
        "assumed: Confluent (2015), Dattell: a conservative 10 MB/s per partition",
    ),
    Constant(
        "partition_records_per_second",
        PARTITION_RECORDS_PER_SECOND,
        "records/s",
        "measured: docs/performance.md Producer table, confluent-kafka row / 6 partitions",
    ),
    Constant("replication_factor", REPLICATION_FACTOR, "copies", "chosen (production, chaos)"),
    Constant("input_consumer_groups", INPUT_CONSUMER_GROUPS, "groups", "processor, audit"),
    Constant("topics", TOPICS, "topics", "topology.toml"),
    Constant(
        "broker_disk_write_bytes_per_second",
        BROKER_DISK_WRITE_BYTES_PER_SECOND,
        "bytes/s",
        "assumed: AWS EBS gp3 baseline (125 MiB/s)",
    ),
    Constant(
        "broker_network_bytes_per_second",
        BROKER_NETWORK_BYTES_PER_SECOND,
        "bytes/s per direction",
        "assumed: 1 Gbit/s",
    ),
    Constant(
        "broker_partition_replicas",
        BROKER_PARTITION_REPLICAS,
        "partition replicas",
        "Confluent (2018): up to 4,000 per broker",
    ),
    Constant("min_partitions", MIN_PARTITIONS, "partitions", "topology.toml default"),
    Constant("min_processor_replicas", MIN_PROCESSOR_REPLICAS, "replicas", "chosen"),
    Constant("partition_scale_out", PARTITION_SCALE_OUT, "x replicas", "chosen"),
    Constant("drain_seconds", DRAIN_SECONDS, "s", "the scaling signal's target"),
)


# --------------------------------------------------------------------------- arithmetic


def processor_replica_events_per_second(headroom: float = HEADROOM) -> float:
    """Events/s one processor replica sustains: its cores x headroom / CPU s per event.
    The Prometheus rule's fallback (``vector(186667)``) is this, rounded."""
    return PROCESSOR_CORES_PER_REPLICA * headroom * 1e6 / PROCESSOR_CPU_SECONDS_PER_MILLION


def producer_instance_events_per_second(headroom: float = HEADROOM) -> float:
    """Events/s one producer instance sustains, likewise."""
    return PRODUCER_CORES_PER_INSTANCE * headroom * 1e6 / PRODUCER_CPU_SECONDS_PER_MILLION


def _ceil(value: float) -> int:
    """Round up, ignoring float noise below 1e-9 (7.000000000001 is 7)."""
    return math.ceil(value - 1e-9)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one input rate needs, and the arithmetic that says so."""

    rate: float
    """Input events per second."""
    headroom: float
    replication_factor: int
    record_bytes: int
    input_bytes_per_second: float
    """rate x record size: what the producers write to the input topic."""
    processor_replicas: int
    producer_instances: int
    partitions: int
    brokers: int
    broker_write_bytes_per_second: float
    """Over the cluster: input bytes x replication factor (disk write = network in)."""
    broker_egress_bytes_per_second: float
    """Over the cluster: input bytes x (replication factor - 1 + consumer groups)."""
    arithmetic: dict[str, str]
    """Per quantity, the formula with the numbers put in."""


def _n(value: float) -> str:
    """A number for the arithmetic lines: thousands separated, at most one decimal."""
    if abs(value - round(value)) < 0.05:
        return f"{round(value):,}"
    return f"{value:,.1f}"


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB/s"


def plan(
    rate: float, *, headroom: float = HEADROOM, replication_factor: int = REPLICATION_FACTOR
) -> Plan:
    """The model for ``rate`` events per second."""
    replica_rate = processor_replica_events_per_second(headroom)
    processor_needed = _ceil(rate / replica_rate)
    replicas = max(MIN_PROCESSOR_REPLICAS, processor_needed)

    producer_rate = producer_instance_events_per_second(headroom)
    producers = max(1, _ceil(rate / producer_rate))

    input_bytes = rate * RECORD_BYTES
    by_bytes = _ceil(input_bytes / (PARTITION_WRITE_BYTES_PER_SECOND * headroom))
    by_records = _ceil(rate / (PARTITION_RECORDS_PER_SECOND * headroom))
    by_replicas = PARTITION_SCALE_OUT * replicas
    partitions = max(MIN_PARTITIONS, by_bytes, by_records, by_replicas)

    write = input_bytes * replication_factor
    egress = input_bytes * (replication_factor - 1 + INPUT_CONSUMER_GROUPS)
    by_disk = _ceil(write / (BROKER_DISK_WRITE_BYTES_PER_SECOND * headroom))
    by_network = _ceil(egress / (BROKER_NETWORK_BYTES_PER_SECOND * headroom))
    partition_replicas = TOPICS * partitions * replication_factor
    by_partition_replicas = _ceil(partition_replicas / (BROKER_PARTITION_REPLICAS * headroom))
    brokers = max(replication_factor, by_disk, by_network, by_partition_replicas)

    h = f"{headroom:g}"
    per_core = _n(1e6 / PROCESSOR_CPU_SECONDS_PER_MILLION)
    producer_per_core = _n(1e6 / PRODUCER_CPU_SECONDS_PER_MILLION)
    partition_mb = _mb(PARTITION_WRITE_BYTES_PER_SECOND)
    disk_mb = _mb(BROKER_DISK_WRITE_BYTES_PER_SECOND)
    network_mb = _mb(BROKER_NETWORK_BYTES_PER_SECOND)
    arithmetic = {
        "processor_replicas": (
            f"max({MIN_PROCESSOR_REPLICAS}, ⌈{_n(rate)} / ({per_core} ev/s per core"
            f" x {PROCESSOR_CORES_PER_REPLICA:g} core x {h} = {_n(replica_rate)})⌉"
            f" = {processor_needed}) = {replicas}"
        ),
        "producer_instances": (
            f"⌈{_n(rate)} / ({producer_per_core} ev/s per core"
            f" x {PRODUCER_CORES_PER_INSTANCE:g} core x {h} = {_n(producer_rate)})⌉"
            f" = {producers}"
        ),
        "partitions": (
            f"max({MIN_PARTITIONS}, bytes ⌈{_mb(input_bytes)} / ({partition_mb} x {h})⌉"
            f" = {by_bytes}, records ⌈{_n(rate)} / ({_n(PARTITION_RECORDS_PER_SECOND)}/s"
            f" x {h})⌉ = {by_records}, {PARTITION_SCALE_OUT} x {replicas} replicas"
            f" = {by_replicas}) = {partitions}"
        ),
        "brokers": (
            f"max(RF {replication_factor}, disk ⌈{_mb(write)} / ({disk_mb} x {h})⌉"
            f" = {by_disk}, network out ⌈{_mb(egress)} / ({network_mb} x {h})⌉"
            f" = {by_network}, partition replicas ⌈{_n(partition_replicas)} /"
            f" ({_n(BROKER_PARTITION_REPLICAS)} x {h})⌉ = {by_partition_replicas}) = {brokers}"
        ),
    }
    return Plan(
        rate=rate,
        headroom=headroom,
        replication_factor=replication_factor,
        record_bytes=RECORD_BYTES,
        input_bytes_per_second=input_bytes,
        processor_replicas=replicas,
        producer_instances=producers,
        partitions=partitions,
        brokers=brokers,
        broker_write_bytes_per_second=write,
        broker_egress_bytes_per_second=egress,
        arithmetic=arithmetic,
    )


# --------------------------------------------------------------------------- rendering

_RATE = re.compile(r"(?P<number>[0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][0-9]+)?)(?P<suffix>[kKmM]?)")


def parse_rate(text: str) -> float:
    """Events per second: ``1000000``, ``1_000_000``, ``1e6``, ``100k``, ``1M``. Raises
    ValueError for anything else, zero or more than 10^9."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    value = float(match["number"]) * {"": 1, "k": 1e3, "m": 1e6}[match["suffix"].lower()]
    if not 0 < value <= 1e9:
        raise ValueError(text)
    return value


def render_markdown(plans: Sequence[Plan]) -> str:
    """The table and the arithmetic, as docs/capacity.md holds them."""
    lines = [
        "| input ev/s | MB/s in | partitions | processor replicas | producer instances"
        " | brokers | broker disk write (x RF) | broker network out |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in plans:
        lines.append(
            f"| {_n(p.rate)} | {p.input_bytes_per_second / 1e6:,.1f} | {p.partitions}"
            f" | {p.processor_replicas} | {p.producer_instances} | {p.brokers}"
            f" | {_mb(p.broker_write_bytes_per_second)} | {_mb(p.broker_egress_bytes_per_second)} |"
        )
    first = plans[0] if plans else plan(DEFAULT_RATES[0])
    lines += [
        "",
        f"Headroom {first.headroom:g}, replication factor {first.replication_factor},"
        f" {first.record_bytes} bytes per record.",
    ]
    for p in plans:
        lines += ["", f"{_n(p.rate)} ev/s:", ""]
        lines += [f"- {name.replace('_', ' ')} = {text}" for name, text in p.arithmetic.items()]
    return "\n".join(lines) + "\n"


def render_text(plans: Sequence[Plan]) -> str:
    """For a terminal: per rate, the four answers and their arithmetic."""
    lines: list[str] = []
    for p in plans:
        lines.append(
            f"{_n(p.rate)} ev/s ({p.input_bytes_per_second / 1e6:,.1f} MB/s in, RF"
            f" {p.replication_factor}, headroom {p.headroom:g}): {p.partitions} partitions,"
            f" {p.processor_replicas} processor replicas, {p.producer_instances} producer"
            f" instances, {p.brokers} brokers"
        )
        lines += [f"  {name.replace('_', ' ')} = {text}" for name, text in p.arithmetic.items()]
    return "\n".join(lines) + "\n"


def render_json(plans: Sequence[Plan], *, indent: int | None = 2) -> str:
    """One object: ``constants`` (name, value, unit, source) and ``plans``."""
    document: dict[str, Any] = {
        "constants": [asdict(constant) for constant in CONSTANTS],
        "plans": [asdict(p) for p in plans],
    }
    return json.dumps(document, indent=indent, ensure_ascii=False)


# --------------------------------------------------------------------------- the command


def capacity(
    rate: Annotated[
        list[str] | None,
        typer.Option(
            "--rate",
            metavar="R",
            help="Input events per second (repeatable): 1000000, 1e6, 100k, 1M. "
            "Default: 10k, 100k and 1M.",
            show_default=False,
        ),
    ] = None,
    replication_factor: Annotated[
        int,
        typer.Option(
            "--replication-factor",
            metavar="N",
            help="Copies of every partition (brokers write rate x record size x this).",
        ),
    ] = REPLICATION_FACTOR,
    headroom: Annotated[
        float,
        typer.Option(
            "--headroom",
            metavar="H",
            help="Run every resource at most at this share of its maximum.",
        ),
    ] = HEADROOM,
    as_json: JsonOption = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The table of docs/capacity.md.")
    ] = False,
) -> None:
    """Partitions, processor replicas, producer instances and brokers for an input rate.

    From our measured CPU per event (docs/performance.md), the size of a stored reading
    and stated Kafka limits (docs/capacity.md), each run at --headroom of its maximum.
    Talks to no broker.
    """
    rates: list[float] = []
    for text in rate or [str(r) for r in DEFAULT_RATES]:
        try:
            rates.append(parse_rate(text))
        except ValueError:
            fail(
                f"--rate: {text!r} is not a rate; give events per second above 0 and at most"
                " 1e9, like 1000000, 1e6, 100k or 1M"
            )
    if not 1 <= replication_factor <= 32:
        fail(f"--replication-factor: {replication_factor} is not between 1 and 32")
    if not 0 < headroom <= 1:
        fail(f"--headroom: {headroom:g} is not above 0 and at most 1")
    if as_json and markdown:
        fail("--json and --markdown: choose one")
    plans = [plan(r, headroom=headroom, replication_factor=replication_factor) for r in rates]
    if as_json:
        print(render_json(plans))
    elif markdown:
        print(render_markdown(plans), end="")
    else:
        print(render_text(plans), end="")
    raise typer.Exit(EXIT_OK)
