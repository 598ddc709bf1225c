"""Tracing through the processor: origins by offset, the pipeline's output headers, and the
worker's spans (sensorstream.processor._tracing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consumed_records import Record
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sensorstream.processor._dead_letters import OutputRecord
from sensorstream.processor._pipeline import AlertThresholds, PartitionPipeline, PipelineConfig
from sensorstream.processor._tracing import PartitionTracing, TraceOrigins
from sensorstream.runtime import tracing
from sensorstream.schema import AGGREGATES_TOPIC, ALERTS_TOPIC, decode_aggregate
from sensorstream.schema.testing import valid_payload

TOPIC = "sensor-data"
T0 = 1_700_000_000_000
NOW = T0 / 1000 + 3600


def traceparent(batch: int) -> bytes:
    """The traceparent of producer batch ``batch`` (its own trace and span)."""
    return f"00-{batch + 1:032x}-{batch + 1:016x}-01".encode()


def context(batch: int) -> list[tuple[str, bytes]]:
    return [("traceparent", traceparent(batch))]


class Feed:
    """Numbers records of partition 3 in offset order; each may carry a batch's context."""

    def __init__(self) -> None:
        self.offset = 0

    def reading(
        self, event_time: int, *, batch: int | None, seq: int = 0, temperature: float = 20.0
    ) -> Record:
        value = valid_payload(
            event_id=f"00000000-0000-4000-8000-{self.offset:012d}",
            sensor_id="sensor-0001",
            seq=seq,
            event_time=event_time,
            temperature=temperature,
        )
        headers = [] if batch is None else [("other", b"x"), *context(batch)]
        record = Record(TOPIC, 3, self.offset, T0, b"sensor-0001", value, headers)
        self.offset += 1
        return record


def traced_pipeline(**config: object) -> PartitionPipeline:
    return PartitionPipeline(
        TOPIC,
        3,
        PipelineConfig(instance="test", trace_outputs=True, **config),  # type: ignore[arg-type]
    )


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test", exporter=exporter, environ={})
    yield exporter
    tracing.disable_tracing()


class TestTraceOrigins:
    def test_runs_of_records_answer_for_every_offset(self) -> None:
        """Each offset gets the context of its record; records without one get none."""
        feed = Feed()
        records = [feed.reading(T0, batch=b) for b in (0, 0, None, 1, 1, 1, 0)]  # offsets 0..6
        origins = TraceOrigins()

        seen = origins.note(records)

        assert [context(0), context(1), context(0)] == seen
        assert [context(0), context(0), [], context(1), context(1), context(1), context(0)] == [
            origins.at(offset) for offset in range(7)
        ]
        assert 4 == len(origins)

    def test_a_run_continued_by_the_next_chunk_counts_for_it(self) -> None:
        """A batch split over two chunks is reported for both and stays one run."""
        feed = Feed()
        first = [feed.reading(T0, batch=0) for _ in range(2)]
        second = [feed.reading(T0, batch=0), feed.reading(T0, batch=1)]
        origins = TraceOrigins()

        origins.note(first)
        seen = origins.note(second)

        assert ([context(0), context(1)], 2) == (seen, len(origins))

    def test_forgetting_keeps_the_run_of_the_offset(self) -> None:
        """Runs wholly before the offset go; the one it lies in stays."""
        feed = Feed()
        origins = TraceOrigins()
        origins.note([feed.reading(T0, batch=b) for b in (0, 1, 1, 2)])

        origins.forget_before(2)

        assert (2, [], context(1), context(2)) == (
            len(origins),
            origins.at(0),
            origins.at(2),
            origins.at(3),
        )

    def test_at_returns_a_copy(self) -> None:
        """An output may change its headers without changing the remembered context."""
        feed = Feed()
        origins = TraceOrigins()
        origins.note([feed.reading(T0, batch=0)])

        origins.at(0).clear()

        assert context(0) == origins.at(0)


class TestPipelineTraceOutputs:
    def test_an_aggregate_carries_its_first_readings_context(self) -> None:
        """The window's first reading came in an earlier chunk, from another batch than the
        rest: the aggregate carries that first reading's context."""
        feed = Feed()
        pipeline = traced_pipeline()
        pipeline.process([feed.reading(T0, batch=0, seq=0)], NOW)
        pipeline.process([feed.reading(T0 + 1_000 * i, batch=1, seq=i) for i in (1, 2)], NOW)

        result = pipeline.process([feed.reading(T0 + 16_000, batch=2, seq=3)], NOW)

        [aggregate] = result.outputs
        assert (AGGREGATES_TOPIC, 3, context(0)) == (
            aggregate.topic,
            decode_aggregate(aggregate.value or b"").count,
            aggregate.headers,
        )
        assert [context(2)] == list(result.origins)

    def test_an_alert_carries_its_readings_context(self) -> None:
        """An alert continues the trace of the reading that raised it."""
        feed = Feed()
        pipeline = traced_pipeline(thresholds=AlertThresholds(temperature_high=30.0))

        result = pipeline.process(
            [feed.reading(T0, batch=0), feed.reading(T0 + 1, batch=1, seq=1, temperature=40.0)],
            NOW,
        )

        [alert] = result.outputs
        assert (ALERTS_TOPIC, context(1)) == (alert.topic, alert.headers)

    def test_an_idle_close_reports_the_contexts_its_aggregates_continue(self) -> None:
        """close_idle has no records: its origins are those of the windows it closes."""
        feed = Feed()
        pipeline = traced_pipeline()
        pipeline.process([feed.reading(T0, batch=0), feed.reading(T0 + 1, batch=1, seq=1)], NOW)

        result = pipeline.close_idle()

        assert ([context(0)], [context(0)]) == (
            [out.headers for out in result.outputs],
            list(result.origins),
        )

    def test_runs_are_forgotten_once_no_window_needs_them(self) -> None:
        """Memory stays bounded: after windows close, only runs an open window needs remain."""
        feed = Feed()
        pipeline = traced_pipeline()
        for second in range(100):
            pipeline.process([feed.reading(T0 + second * 1_000, batch=second, seq=second)], NOW)

        assert pipeline.origins is not None
        assert len(pipeline.origins) <= 20

    def test_without_trace_outputs_nothing_is_noted(self) -> None:
        """Tracing off: no origins kept, outputs without headers, no contexts reported."""
        feed = Feed()
        pipeline = PartitionPipeline(TOPIC, 3, PipelineConfig(instance="test"))
        pipeline.process([feed.reading(T0, batch=0)], NOW)

        result = pipeline.process([feed.reading(T0 + 16_000, batch=1, seq=1)], NOW)

        assert (None, (), [[]]) == (
            pipeline.origins,
            result.origins,
            [out.headers for out in result.outputs],
        )


class TestPartitionTracing:
    def test_outputs_continue_from_a_span_under_their_origin(
        self, spans: InMemorySpanExporter
    ) -> None:
        """One produce span per origin and output topic, parented to the origin and linked to
        the chunk span (which links to the chunk's batches); its context replaces the
        origin's in the outputs' headers, other headers stay, untraced outputs are left."""
        feed = Feed()
        records = [feed.reading(T0, batch=0), feed.reading(T0, batch=1)]
        outputs = [
            OutputRecord("agg", b"k", b"v", context(0)),
            OutputRecord("agg", b"k", b"v", context(0)),
            OutputRecord("dlq", b"k", b"v", [("sensorstream.dlq.reason", b"x"), *context(1)]),
            OutputRecord("agg", b"k", b"v", []),
        ]
        chunk = PartitionTracing(TOPIC, 3).begin(
            records, [context(0), context(1)], outputs, {"aggregates": 3}, started=123
        )
        chunk.end()
        tracing.flush_tracing()

        done = {span.name: span for span in spans.get_finished_spans()}
        assert {"process sensor-data", "produce agg", "produce dlq"} == set(done)
        process, agg, dlq = done["process sensor-data"], done["produce agg"], done["produce dlq"]
        assert [1, 2] == [link.context.span_id for link in process.links]
        assert (3, 2, 3, 0, 1) == (
            process.attributes["sensorstream.aggregates"],
            process.attributes[tracing.ATTR_BATCH_COUNT],
            agg.attributes["sensorstream.source.partition"],
            process.attributes["sensorstream.first_offset"],
            process.attributes["sensorstream.last_offset"],
        )
        assert ((1, 1), (2, 2)) == (
            (agg.parent.span_id if agg.parent else None, agg.context.trace_id),
            (dlq.parent.span_id if dlq.parent else None, dlq.context.trace_id),
        )
        assert (2, 1, 123) == (
            agg.attributes[tracing.ATTR_BATCH_COUNT],
            dlq.attributes[tracing.ATTR_BATCH_COUNT],
            agg.start_time,
        )
        assert [process.context.span_id] == [link.context.span_id for link in agg.links]
        assert [agg.context.span_id, agg.context.span_id, dlq.context.span_id, None] == [
            getattr(tracing.extract(out.headers), "span_id", None) for out in outputs
        ]
        assert ("sensorstream.dlq.reason", b"x") == outputs[2].headers[0]

    def test_a_failed_send_marks_every_span_failed(self, spans: InMemorySpanExporter) -> None:
        """Outputs that could not be written: the chunk span and its produce spans show it."""
        feed = Feed()
        outputs = [OutputRecord("agg", b"k", b"v", context(0))]
        chunk = PartitionTracing(TOPIC, 3).begin(
            [feed.reading(T0, batch=0)], [context(0)], outputs, {}, started=1
        )

        chunk.end(RuntimeError("broker gone"))
        tracing.flush_tracing()

        assert {("process sensor-data", "ERROR"), ("produce agg", "ERROR")} == {
            (span.name, span.status.status_code.name) for span in spans.get_finished_spans()
        }
