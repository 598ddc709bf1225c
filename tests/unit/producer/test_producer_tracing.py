"""The producer's tracing (sensorstream.producer._sender): a span per send call, its context
in every record of a sampled batch, and nothing at all while tracing is off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from sensorstream.producer._metrics import ProducerMetrics
from sensorstream.producer._sender import BatchSender
from sensorstream.runtime import tracing

TOPIC = "sensor-data"
PARTITIONS = 3


class HeaderBatch:
    """A batch builder that keeps what each append was given, headers included."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.appended: list[dict[str, Any]] = []

    def append(self, **record: Any) -> object | None:
        if len(self.appended) >= self.capacity:
            return None
        self.appended.append(record)
        return object()

    def close(self) -> None:
        return None


class HeaderProducer:
    """Takes every batch and acknowledges it a loop step later."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.batches: list[HeaderBatch] = []

    def create_batch(self) -> HeaderBatch:
        batch = HeaderBatch(self.capacity)
        self.batches.append(batch)
        return batch

    async def send_batch(self, batch: HeaderBatch, topic: str, *, partition: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, None)
        return future

    @property
    def appended(self) -> list[dict[str, Any]]:
        return [record for batch in self.batches for record in batch.appended]


def records(count: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"sensor-{i % 7:04d}".encode(), b"{}") for i in range(start, start + count)]


async def send(producer: HeaderProducer, *batches: list[tuple[bytes, bytes]]) -> None:
    sender = BatchSender(
        producer,
        TOPIC,
        partitions=PARTITIONS,
        max_in_flight_batches=4,
        metrics=ProducerMetrics(CollectorRegistry()),
    )
    try:
        for batch in batches:
            await sender.send(batch, 1_700_000_000_000)
        assert await sender.flush(5)
    finally:
        await sender.close()


@pytest.fixture
def spans(request: pytest.FixtureRequest) -> Iterator[InMemorySpanExporter]:
    """Tracing on with the sampler ``request.param`` names (default: every span sampled)."""
    exporter = InMemorySpanExporter()
    environ = getattr(request, "param", {})
    tracing.configure_tracing("test", exporter=exporter, environ=environ)
    yield exporter
    tracing.disable_tracing()


class TestTracingOff:
    async def test_records_are_appended_without_headers(self) -> None:
        """Off: no headers argument at all (the append aiokafka has always had)."""
        tracing.disable_tracing()
        producer = HeaderProducer()

        await send(producer, records(10))

        assert [["key", "timestamp", "value"]] * 10 == [sorted(r) for r in producer.appended]


class TestTracingOn:
    async def test_one_span_per_send_with_messaging_attributes(
        self, spans: InMemorySpanExporter
    ) -> None:
        """Each send call is one producer span named after the topic, counting its records."""
        await send(HeaderProducer(), records(10), records(4, start=10))
        tracing.flush_tracing()

        done = spans.get_finished_spans()
        assert [("produce sensor-data", "PRODUCER")] * 2 == [(s.name, s.kind.name) for s in done]
        assert [
            {
                "messaging.system": "kafka",
                "messaging.destination.name": TOPIC,
                "messaging.operation.type": "send",
                "messaging.operation.name": "produce",
                "messaging.batch.message_count": count,
            }
            for count in (10, 4)
        ] == [dict(s.attributes or {}) for s in done]

    async def test_every_record_carries_its_batch_spans_context(
        self, spans: InMemorySpanExporter
    ) -> None:
        """All records of a send call, in every partition and aiokafka batch (3 records
        each here), carry that call's span context; the next call's records the next."""
        producer = HeaderProducer(capacity=3)

        await send(producer, records(10), records(4, start=10))
        tracing.flush_tracing()

        first, second = (s.context.span_id for s in spans.get_finished_spans())
        carried = [tracing.extract(r["headers"]) for r in producer.appended]
        assert 14 == len(carried)
        assert [] == [c for c in carried if c is None]
        assert {first: 10, second: 4} == {
            span_id: sum(1 for c in carried if c is not None and c.span_id == span_id)
            for span_id in (first, second)
        }

    @pytest.mark.parametrize(
        "spans",
        [{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}],
        indirect=True,
    )
    async def test_an_unsampled_batch_carries_no_header(self, spans: InMemorySpanExporter) -> None:
        """Not sampled: the records go out as with tracing off, and no span is exported."""
        producer = HeaderProducer()

        await send(producer, records(10))
        tracing.flush_tracing()

        assert [] == [r for r in producer.appended if "headers" in r]
        assert () == spans.get_finished_spans()
