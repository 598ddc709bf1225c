"""What tracing costs: the producer, the processor and its pure core, tracing off and on.

Modes: ``off`` (no OTEL_* set: the default), and tracing on with the parent-based
trace-id-ratio sampler at 100 % and 1 %. Spans go to an exporter that drops them: the
SDK's whole work (sampling, span objects, ids, attributes, the batch span processor's
queue and thread) is done, only the network is not.

- core: ``PartitionPipeline.process`` on pre-built records (bench_pipeline_core's), plus
  the worker's chunk and output spans when on; the records carry a producer batch's
  ``traceparent`` per BATCH_RECORDS records, for the sampled share of batches. CPU
  ns/event, with the processor service's garbage-collector thresholds (``tune_gc``).
- sender: generating, partitioning and batching readings (``SensorFleet.generate`` +
  ``BatchSender.send`` into real aiokafka batches, handed to a stand-in client that
  acknowledges at once), in batches of 5,000 like ``--rate max``: the producer's own CPU
  per event without the broker and the network, so it stays readable on a busy machine.
- producer: our producer at ``--rate max`` for ``--seconds`` (bench_producer's "ours"), in
  a process of its own: acknowledged ev/s and CPU s per 1M events.
- processor: a 6-partition topic filled by our producer (``--fill-rate`` ev/s, with tracing
  in the same mode, so the records carry what a traced producer writes), then the full
  processor (at-least-once, fresh group) until it consumed everything, in a process of
  its own: ev/s and CPU s per 1M events.

    uv run python benchmarks/bench_tracing.py [--parts core,sender,producer,processor]
        [--modes off,100%,1%] [--seconds 10] [--events 1000000] [--fill-rate 100000]

Without ``--bootstrap`` it starts a broker on free ports and stops it at the end. Runs
against any source tree on PYTHONPATH in ``off`` mode, so the same script measures the
code before tracing existed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = {"off": None, "100%": 1.0, "1%": 0.01}
PARTS = ("core", "sender", "producer", "processor")
BATCH_RECORDS = 80
"""Records per producer batch in the core part (a send call's share of one partition)."""
PARTITIONS = 6
SENSORS = 1_000


def _environ(ratio: float) -> dict[str, str]:
    return {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }


class _Dropped:
    """A SpanExporter that counts the spans and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _tracing_on(service: str, ratio: float | None) -> _Dropped | None:
    if ratio is None:
        return None
    from sensorstream.runtime import tracing

    dropped = _Dropped()
    tracing.configure_tracing(service, exporter=dropped, environ=_environ(ratio))  # type: ignore[arg-type]
    return dropped


def _cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- core ----------------------------------------------------------------------------------
def core(events: int, ratio: float | None, repeat: int) -> dict[str, float]:
    """ns per event of the pipeline (and, when on, the worker's spans) on one partition."""
    import random

    import bench_pipeline_core
    from sensorstream.processor._pipeline import PartitionPipeline, PipelineConfig
    from sensorstream.schema import INPUT_TOPIC

    dropped = _tracing_on("bench-core", ratio)
    batches = bench_pipeline_core.make_batches(events)
    if ratio is not None:
        rng = random.Random(3)
        traced = []
        for batch in batches:
            records = []
            for i, record in enumerate(batch):
                if i % BATCH_RECORDS == 0:
                    sampled = rng.random() < ratio
                    parent = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
                    headers = [("traceparent", parent.encode())] if sampled else []
                records.append(dataclasses.replace(record, headers=headers))
            traced.append(records)
        batches = traced
    gc.collect()
    gc.freeze()
    # The collector as the processor service runs it (tune_gc): what the spans and the
    # output headers allocate costs what it costs there.
    gc.set_threshold(50_000, 20, 100)
    best = float("inf")
    for _ in range(repeat):
        config = (
            PipelineConfig(instance="bench")
            if ratio is None
            else PipelineConfig(instance="bench", trace_outputs=True)
        )
        pipeline = PartitionPipeline(INPUT_TOPIC, 0, config, collect_valid=False)
        spans = None
        if ratio is not None:
            from sensorstream.processor._tracing import PartitionTracing

            spans = PartitionTracing(INPUT_TOPIC, 0)
        gc.collect()
        now = time.time()
        started = time.process_time_ns()
        for batch in batches:
            began = time.time_ns()
            result = pipeline.process(batch, now)
            if spans is not None:
                counts = {"aggregates": result.aggregates}
                spans.begin(batch, result.origins, result.outputs, counts, began).end()
        best = min(best, time.process_time_ns() - started)
    if ratio is not None:
        from sensorstream.runtime import tracing

        tracing.flush_tracing()
    total = sum(len(batch) for batch in batches)
    return {"ns_per_event": best / total, "spans": (dropped.spans / repeat) if dropped else 0}


# -- sender --------------------------------------------------------------------------------
class _AcknowledgingClient:
    """The two calls BatchSender makes of aiokafka's producer; every batch is acked at once."""

    def __init__(self) -> None:
        from aiokafka.producer.message_accumulator import BatchBuilder

        self._builder = BatchBuilder

    def create_batch(self) -> Any:
        return self._builder(131_072, 0)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def sender(events: int, ratio: float | None, repeat: int) -> dict[str, float]:
    """CPU ns per event to generate, partition and batch ``events`` readings."""
    import uvloop
    from prometheus_client import CollectorRegistry

    from sensorstream.producer._metrics import ProducerMetrics
    from sensorstream.producer._sender import BatchSender
    from sensorstream.producer._simulation import SensorFleet

    dropped = _tracing_on("bench-sender", ratio)
    step = 5_000

    async def once() -> int:
        fleet = SensorFleet(SENSORS, seed=1, anomaly_probability=0.001)
        batches = BatchSender(
            _AcknowledgingClient(),
            "bench",
            partitions=PARTITIONS,
            max_in_flight_batches=24,
            metrics=ProducerMetrics(CollectorRegistry()),
        )
        now_ms = time.time_ns() // 1_000_000
        gc.collect()
        started = time.process_time_ns()
        for _ in range(events // step):
            await batches.send(fleet.generate(step, now_ms), now_ms)
            await asyncio.sleep(0)
        assert await batches.flush(30)
        spent = time.process_time_ns() - started
        await batches.close()
        return spent

    best = min(uvloop.run(once()) for _ in range(repeat))
    if dropped is not None:
        from sensorstream.runtime import tracing

        tracing.flush_tracing()
    done = events // step * step
    return {"ns_per_event": best / done, "spans": (dropped.spans / repeat) if dropped else 0}


# -- producer ------------------------------------------------------------------------------
def producer(bootstrap: str, topic: str, seconds: float, ratio: float | None) -> dict[str, float]:
    import bench_producer

    dropped = _tracing_on("bench-producer", ratio)
    result = bench_producer.run_contender("ours", bootstrap, topic, seconds)
    if dropped is not None:
        from sensorstream.runtime import tracing

        tracing.flush_tracing()
        result["spans"] = dropped.spans
    return result


def fill(bootstrap: str, topic: str, events: int, rate: float, ratio: float | None) -> None:
    """Produce ``events`` readings with our producer, traced as ``ratio`` says."""
    import uvloop
    from prometheus_client import CollectorRegistry

    from sensorstream.producer._service import ProducerService
    from sensorstream.producer.settings import ProducerSettings
    from sensorstream.runtime import StopSignal, load_settings

    _tracing_on("bench-fill", ratio)
    settings = load_settings(
        ProducerSettings,
        ["--bootstrap-servers", bootstrap, "--topic", topic, "--rate", f"{rate:g}",
         "--count", str(events), "--sensors", str(SENSORS), "--seed", "1",
         "--metrics-port", "0", "--log-level", "warning"],
    )  # fmt: skip
    service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
    if uvloop.run(service.run()) != 0:
        raise SystemExit("the fill producer failed")


# -- processor -----------------------------------------------------------------------------
def processor_child(ratio: float | None) -> None:
    """The processor service, configured from the environment, traced as ``ratio`` says."""
    from sensorstream.processor._service import ProcessorService, configure
    from sensorstream.processor.settings import ProcessorSettings
    from sensorstream.runtime import StopSignal, load_settings, run_service

    settings = load_settings(ProcessorSettings, [])
    configure(settings)

    async def run(stop: StopSignal) -> int:
        _tracing_on("bench-processor", ratio)
        return await ProcessorService(settings).run(stop)

    sys.exit(run_service(run, prog="bench-processor"))


def processor(bootstrap: str, topic: str, total: int, ratio: float | None) -> dict[str, float]:
    import kafkactl

    import bench_processor

    port = kafkactl.free_port()
    suffix = uuid.uuid4().hex[:8]
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
    argv = [sys.executable, __file__, "--child", "processor"]
    if ratio is not None:
        argv += ["--ratio", str(ratio)]
    proc = subprocess.Popen(argv, env=env)
    try:
        bench_processor.wait_metrics(port, proc)
        name = "sensorstream_processor_events_consumed_total"
        started = None
        consumed = first = 0.0
        cpu0 = 0.0
        while consumed < total:
            time.sleep(0.05)
            consumed = bench_processor.metric(port, name)
            if started is None and consumed > 0:
                started, first = time.perf_counter(), consumed
                cpu0, _ = bench_processor.proc_usage(proc.pid)
        assert started is not None
        elapsed = time.perf_counter() - started
        cpu, rss = bench_processor.proc_usage(proc.pid)
        return {"events": consumed - first, "seconds": elapsed, "cpu": cpu - cpu0, "rss_mb": rss}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# -- driver --------------------------------------------------------------------------------
def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=900, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _ratio_args(ratio: float | None) -> list[str]:
    return [] if ratio is None else ["--ratio", str(ratio)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seconds", type=float, default=10.0, help="producer run per mode")
    parser.add_argument("--events", type=int, default=1_000_000, help="processor backlog")
    parser.add_argument("--core-events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3, help="core: best of")
    parser.add_argument("--fill-rate", type=float, default=100_000.0)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--sender-events", type=int, default=500_000)
    parser.add_argument("--child", choices=["core", "sender", "producer", "fill", "processor"])
    parser.add_argument("--ratio", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "core":
        print(json.dumps(core(args.core_events, args.ratio, args.repeat)))
        return 0
    if args.child == "sender":
        print(json.dumps(sender(args.sender_events, args.ratio, args.repeat)))
        return 0
    if args.child == "producer":
        print(json.dumps(producer(args.bootstrap, args.topic, args.seconds, args.ratio)))
        return 0
    if args.child == "fill":
        fill(args.bootstrap, args.topic, args.events, args.fill_rate, args.ratio)
        print(json.dumps({}))
        return 0
    if args.child == "processor":
        processor_child(args.ratio)
        return 0

    parts = [p for p in args.parts.split(",") if p]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [*(set(parts) - set(PARTS)), *(set(modes) - set(MODES))]
    if unknown:
        parser.error(f"unknown parts or modes: {unknown}")
    rows: list[tuple[str, str, dict[str, Any]]] = []
    if "core" in parts:
        for mode in modes:
            ratio = MODES[mode]
            extra = ["--core-events", str(args.core_events), "--repeat", str(args.repeat)]
            rows.append(("core", mode, _child("--child", "core", *extra, *_ratio_args(ratio))))
            print(f"measured core {mode}", file=sys.stderr)
    if "sender" in parts:
        for mode in modes:
            ratio = MODES[mode]
            extra = ["--sender-events", str(args.sender_events), "--repeat", str(args.repeat)]
            result = _child("--child", "sender", *extra, *_ratio_args(ratio))
            rows.append(("sender", mode, result))
            print(f"measured sender {mode}", file=sys.stderr)
    if "producer" in parts or "processor" in parts:
        rows += _with_kafka(args, parts, modes)
    _print(rows)
    return 0


def _with_kafka(
    args: argparse.Namespace, parts: list[str], modes: list[str]
) -> list[tuple[str, str, dict[str, Any]]]:
    import kafkactl

    import bench_producer

    data_dir = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-tracing-kafka-"))
        ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
        cluster = kafkactl.start(
            ports=ports[:1], controller_ports=ports[1:], data_dir=data_dir, heap="1g"
        )
        bootstrap = cluster.bootstrap
    rows: list[tuple[str, str, dict[str, Any]]] = []
    try:
        for mode in modes:
            ratio = MODES[mode]
            if "producer" in parts:
                topic = f"bench-tracing-{uuid.uuid4().hex[:8]}"
                asyncio.run(bench_producer._create_topic(bootstrap, topic))
                result = _child(
                    "--child", "producer", "--bootstrap", bootstrap, "--topic", topic,
                    "--seconds", str(args.seconds), *_ratio_args(ratio),
                )  # fmt: skip
                rows.append(("producer", mode, result))
                print(f"measured producer {mode}", file=sys.stderr)
            if "processor" in parts:
                topic = f"bench-tracing-in-{uuid.uuid4().hex[:8]}"
                asyncio.run(bench_producer._create_topic(bootstrap, topic))
                _child(
                    "--child", "fill", "--bootstrap", bootstrap, "--topic", topic,
                    "--events", str(args.events), "--fill-rate", str(args.fill_rate),
                    *_ratio_args(ratio),
                )  # fmt: skip
                rows.append(("processor", mode, processor(bootstrap, topic, args.events, ratio)))
                print(f"measured processor {mode}", file=sys.stderr)
    finally:
        if data_dir is not None:
            kafkactl.stop(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
    return rows


def _print(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    print("Tracing off (the default) and on (parentbased_traceidratio), spans dropped\n")
    for part, title in (
        ("core", "core: pipeline + worker spans"),
        ("sender", "sender: generate + batch"),
    ):
        part_rows = [(mode, r) for p, mode, r in rows if p == part]
        if not part_rows:
            continue
        off = next((r["ns_per_event"] for mode, r in part_rows if mode == "off"), None)
        print(f"| {title} | CPU ns/event | spans per run | vs off |")
        print("|---|---:|---:|---:|")
        for mode, r in part_rows:
            ratio = f"{r['ns_per_event'] / off:.3f}x" if off else "-"
            print(f"| {mode} | {r['ns_per_event']:,.0f} | {r['spans']:,.0f} | {ratio} |")
        print()
    for part in ("producer", "processor"):
        part_rows = [(mode, r) for p, mode, r in rows if p == part]
        if not part_rows:
            continue
        off = next((r for mode, r in part_rows if mode == "off"), None)
        print(f"| {part} | events | ev/s | CPU s per 1M events | ev/s vs off | CPU vs off |")
        print("|---|---:|---:|---:|---:|---:|")
        for mode, r in part_rows:
            rate = r["events"] / r["seconds"]
            cpu = r["cpu"] / r["events"] * 1e6
            if off is not None:
                off_rate = off["events"] / off["seconds"]
                off_cpu = off["cpu"] / off["events"] * 1e6
                versus = f"{rate / off_rate:.3f}x | {cpu / off_cpu:.3f}x"
            else:
                versus = "- | -"
            print(f"| {mode} | {int(r['events']):,} | {rate:,.0f} | {cpu:.2f} | {versus} |")
        print()


if __name__ == "__main__":
    raise SystemExit(main())
