"""Tracing end to end on the real broker: a reading's trace runs from the producer's batch
span through the processor's spans into the headers of the aggregate it ended up in, and
with tracing off nothing of it exists.

Producer and processor run in-process (``ProducerService``, ``ProcessorService``) with
spans going to the SDK's ``InMemorySpanExporter``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from kafka_helpers import consume_all, new_topic_name
from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.processor._service import ProcessorService
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.producer._service import ProducerService
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import StopSignal, load_settings, tracing
from sensorstream.schema import SensorReading, decode_aggregate, decode_reading

READINGS = 240
SENSORS = 6
PROCESSED_WITHIN = 60.0
# A malformed record sent by someone else's traced code: its dead letter continues its trace.
POISON_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
POISON_PARENT = 0x00F067AA0BA902B7
POISON_TRACEPARENT = f"00-{POISON_TRACE:032x}-{POISON_PARENT:016x}-01".encode()


@dataclass
class Topics:
    input: str
    aggregates: str
    alerts: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls) -> Topics:
        return cls(
            input=new_topic_name("tracing-in"),
            aggregates=new_topic_name("tracing-agg"),
            alerts=new_topic_name("tracing-alerts"),
            dlq=new_topic_name("tracing-dlq"),
            group=new_topic_name("tracing-group"),
        )


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on (every span sampled), spans kept in memory; off again afterwards."""
    monkeypatch.setattr("sensorstream.processor._service.tune_gc", lambda: None)
    spans = InMemorySpanExporter()
    tracing.configure_tracing("sensorstream-test", exporter=spans, environ={})
    try:
        yield spans
    finally:
        tracing.disable_tracing()


@pytest.fixture
def tracing_off(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Tracing as a service starts it with no OTEL_* set; the names of any span started."""
    monkeypatch.setattr("sensorstream.processor._service.tune_gc", lambda: None)
    assert not tracing.configure_tracing("sensorstream-test", environ={})
    started: list[str] = []
    real = tracing.start_span

    def spy(name: str, **kwargs: Any) -> Any:
        started.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(tracing, "start_span", spy)
    return started


async def produce(bootstrap: str, topics: Topics) -> None:
    settings = load_settings(
        ProducerSettings,
        ["--bootstrap-servers", bootstrap, "--topic", topics.input, "--metrics-port", "0",
         "--rate", "1000", "--count", str(READINGS), "--sensors", str(SENSORS),
         "--partitions", "3", "--log-level", "warning"],
    )  # fmt: skip
    assert 0 == await ProducerService(settings, StopSignal(), registry=CollectorRegistry()).run()


async def produce_poison(bootstrap: str, topics: Topics) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.input,
            b'{"not json',
            key=b"poison",
            headers=[("traceparent", POISON_TRACEPARENT)],
        )
    finally:
        await producer.stop()


async def process(bootstrap: str, topics: Topics) -> list[Any]:
    """Run the processor until the aggregates count every reading; return their records."""
    settings = load_settings(
        ProcessorSettings,
        ["--bootstrap-servers", bootstrap, "--topic", topics.input, "--group-id", topics.group,
         "--aggregates-topic", topics.aggregates, "--alerts-topic", topics.alerts,
         "--dlq-topic", topics.dlq, "--output-partitions", "3", "--metrics-port", "0",
         "--window-size", "1", "--allowed-lateness", "0.5", "--idle-timeout", "2",
         "--commit-interval", "0.5", "--log-level", "warning"],
    )  # fmt: skip
    stop = StopSignal()
    service = ProcessorService(settings, ProcessorMetrics(CollectorRegistry()))
    running = asyncio.create_task(service.run(stop))
    deadline = time.monotonic() + PROCESSED_WITHIN
    try:
        while True:
            assert not running.done(), f"the processor stopped early: {running}"
            records = await _aggregates(bootstrap, topics)
            counted = sum(decode_aggregate(r.value).count for r in records)
            if counted >= READINGS:
                return records
            assert time.monotonic() < deadline, f"{counted} of {READINGS} readings aggregated"
            await asyncio.sleep(0.5)
    finally:
        stop.request("test over")
        assert 0 == await asyncio.wait_for(running, 30)


async def _aggregates(bootstrap: str, topics: Topics) -> list[Any]:
    try:
        return await consume_all(bootstrap, topics.aggregates)
    except LookupError:  # not created yet
        return []


def first_readings(records: list[Any]) -> dict[tuple[str, int], Any]:
    """The input records by (sensor id, seq)."""
    by_seq = {}
    for record in records:
        reading = decode_reading(record.value)
        assert isinstance(reading, SensorReading)
        assert reading.seq is not None
        by_seq[(reading.sensor_id, reading.seq)] = record
    return by_seq


def named(spans: tuple[ReadableSpan, ...], name: str) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans if span.name == name}


class TestTracingOn:
    async def test_an_aggregate_continues_the_trace_of_its_first_reading(
        self, kafka_bootstrap: str, exporter: InMemorySpanExporter
    ) -> None:
        """Every reading carries its producer batch span's context, and a processor chunk
        span links to each batch; every aggregate carries the context of a processor span
        in the trace of its window's first reading, whose parent is that reading's batch
        span and which links to the processor span of its chunk."""
        topics = Topics.fresh()
        await produce(kafka_bootstrap, topics)
        aggregates = await process(kafka_bootstrap, topics)
        readings = await consume_all(kafka_bootstrap, topics.input)
        assert tracing.flush_tracing()
        spans = exporter.get_finished_spans()

        batches = named(spans, f"produce {topics.input}")
        assert READINGS == sum(s.attributes[tracing.ATTR_BATCH_COUNT] for s in batches.values())
        assert {("kafka", topics.input, "send")} == {
            (
                s.attributes[tracing.ATTR_SYSTEM],
                s.attributes[tracing.ATTR_DESTINATION],
                s.attributes[tracing.ATTR_OPERATION_TYPE],
            )
            for s in batches.values()
        }
        carried = [tracing.extract(r.headers) for r in readings]
        assert [] == [c for c in carried if c is None or c.span_id not in batches]

        chunks = named(spans, f"process {topics.input}")
        linked = {link.context.span_id for chunk in chunks.values() for link in chunk.links}
        assert set(batches) == linked, "a chunk span links every batch it consumed"
        outputs = named(spans, f"produce {topics.aggregates}")
        by_seq = first_readings(readings)
        assert aggregates
        for record in aggregates:
            aggregate = decode_aggregate(record.value)
            assert aggregate.first_seq is not None
            origin = tracing.extract(by_seq[(aggregate.sensor_id, aggregate.first_seq)].headers)
            assert origin is not None
            context = tracing.extract(record.headers)
            assert context is not None, f"no trace context on {aggregate}"
            output = outputs[context.span_id]
            assert origin.trace_id == context.trace_id == output.context.trace_id
            assert output.parent is not None
            assert origin.span_id == output.parent.span_id
            assert batches[origin.span_id].context.trace_id == origin.trace_id
            [link] = output.links
            assert link.context.span_id in chunks

    async def test_a_dead_letter_continues_the_trace_of_its_record(
        self, kafka_bootstrap: str, exporter: InMemorySpanExporter
    ) -> None:
        """A malformed record with a trace context of its own: its dead letter keeps the
        record's headers but carries the context of a processor span in that trace, whose
        parent is the record's context."""
        topics = Topics.fresh()
        await produce(kafka_bootstrap, topics)
        await produce_poison(kafka_bootstrap, topics)
        await process(kafka_bootstrap, topics)
        [letter] = await consume_all(kafka_bootstrap, topics.dlq)
        assert tracing.flush_tracing()

        outputs = named(exporter.get_finished_spans(), f"produce {topics.dlq}")
        context = tracing.extract(letter.headers)
        assert context is not None
        output = outputs[context.span_id]
        assert output.parent is not None
        assert (POISON_TRACE, POISON_PARENT) == (context.trace_id, output.parent.span_id)
        assert 1 == output.attributes[tracing.ATTR_BATCH_COUNT]
        assert [context.span_id] == [
            int(value[36:52], 16) for name, value in letter.headers if name == "traceparent"
        ]


class TestTracingOff:
    async def test_no_span_and_no_trace_header_anywhere(
        self, kafka_bootstrap: str, tracing_off: list[str]
    ) -> None:
        """With no OTEL_* set, no span is started and no record carries a trace context:
        neither the readings nor the aggregates."""
        topics = Topics.fresh()
        await produce(kafka_bootstrap, topics)
        aggregates = await process(kafka_bootstrap, topics)
        readings = await consume_all(kafka_bootstrap, topics.input)

        assert not tracing.enabled
        assert [] == tracing_off
        assert READINGS == len(readings)
        assert [] == [r for r in [*readings, *aggregates] if tracing.trace_headers(r.headers)]
