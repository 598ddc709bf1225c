"""Tracing through the processor: which trace each output continues, and its spans.

Used only while ``sensorstream.runtime.tracing.enabled``; with tracing off neither class
is built and the pipeline and worker do no tracing work at all.

- :class:`TraceOrigins` (pure, owned by the partition's pipeline) remembers which trace
  context the consumed records carried, by offset. A producer batch's records share one
  ``traceparent`` and lie next to each other on a partition, so it keeps *runs*: the
  offset where a context starts, and the context. A window asks for the context of its
  first reading (``SensorWindow.first_offset``), which may lie chunks back; runs no open
  window can ask for any more are forgotten after each chunk.
- :class:`PartitionTracing` (side effects, owned by the partition's worker) opens, per
  chunk, a ``process <topic>`` span with a link to each producer batch in the chunk (a
  batch of records has many parents, so: links, not a parent; an idle close links to
  the batches of its windows' first readings instead), and per output topic and origin
  a ``produce <output topic>`` span whose parent is that origin (the first reading of an
  aggregate's window, the reading an alert or dead letter is about) and which links back
  to the chunk's span. Its context replaces the origin's in the output's headers. So one
  trace shows a reading's way: the producer's batch span, the processor's span that
  produced from it, and the aggregate that carries it on. ``docs/tracing.md`` has more.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from sensorstream.runtime import tracing

from ._dead_letters import OutputRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

__all__ = ["PartitionTracing", "TraceOrigins", "TracedChunk"]

_TRACEPARENT: Final = tracing.TRACEPARENT
_CACHED_CONTEXTS: Final = 4096
_UNSEEN: Final = b"unseen"
"""The traceparent before the first record: never equal to a record's (bytes or None)."""


class TraceOrigins:
    """The trace context each consumed offset's record carried, as runs (see the module doc)."""

    __slots__ = ("_current", "_runs", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        """The offset where each run starts, ascending."""
        self._runs: list[tracing.TraceHeaders | None] = []
        """Each run's trace headers (None: its records carry none)."""
        self._current: bytes | None = _UNSEEN

    def note(self, records: Sequence[Any]) -> list[tracing.TraceHeaders]:
        """Remember the contexts of ``records`` (in offset order); return the distinct
        ones among them, in order."""
        if not records:
            return []
        starts, runs = self._starts, self._runs
        current = self._current
        for record in records:
            # Once per event while tracing is on: a scan of its few headers, if any.
            traceparent = None
            headers = record.headers
            if headers:
                for name, value in headers:
                    if name == _TRACEPARENT:
                        traceparent = value
                        break
            if traceparent != current:
                current = traceparent
                starts.append(record.offset)
                runs.append(None if traceparent is None else tracing.trace_headers(record.headers))
        self._current = current
        first = max(0, bisect_right(starts, records[0].offset) - 1)
        return [run for run in runs[first:] if run is not None]

    def at(self, offset: int) -> tracing.TraceHeaders:
        """The trace headers the record at ``offset`` carried (a new list; empty if none)."""
        index = bisect_right(self._starts, offset) - 1
        run = self._runs[index] if index >= 0 else None
        return [] if run is None else list(run)

    def forget_before(self, offset: int) -> None:
        """Nothing will ask for an offset below ``offset`` again: drop the runs before it."""
        index = bisect_right(self._starts, offset) - 1
        if index > 0:
            del self._starts[:index]
            del self._runs[:index]

    def __len__(self) -> int:
        return len(self._starts)


class TracedChunk:
    """The spans of one chunk in progress: end them with :meth:`end` once it is done."""

    __slots__ = ("_outputs", "_spans", "span")

    def __init__(self, span: Span, spans: list[tuple[Span, int]]) -> None:
        self.span = span
        """The chunk's ``process`` span."""
        self._spans = spans
        """(``produce`` span, outputs it stands for)."""
        self._outputs = sum(count for _, count in spans)

    def end(self, error: BaseException | None = None) -> None:
        """The outputs are written (``error`` None) or could not be: end every span."""
        for span, count in self._spans:
            span.set_attribute(tracing.ATTR_BATCH_COUNT, count)
            if error is not None:
                tracing.record_error(span, error)
            span.end()
        if error is not None:
            tracing.record_error(self.span, error)
        self.span.end()


class PartitionTracing:
    """Spans for one partition's chunks and outputs (see the module doc)."""

    __slots__ = ("_chunk_name", "_contexts", "partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self._chunk_name = f"process {topic}"
        self._contexts: dict[bytes, SpanContext | None] = {}
        """Parsed contexts by traceparent: a batch is linked by its chunk, then parents the
        outputs of its windows chunks later; parsing it each time was most of the cost."""

    def _context(self, headers: Sequence[tuple[str, bytes | None]]) -> SpanContext | None:
        traceparent = _traceparent(headers)
        if traceparent is None:
            return None
        contexts = self._contexts
        if traceparent in contexts:
            return contexts[traceparent]
        if len(contexts) >= _CACHED_CONTEXTS:
            contexts.clear()
        context = contexts[traceparent] = tracing.extract(headers)
        return context

    def begin(
        self,
        records: Sequence[Any],
        origins: Sequence[tracing.TraceHeaders],
        outputs: list[OutputRecord],
        counts: dict[str, int],
        started: int,
    ) -> TracedChunk:
        """Open the chunk's spans, from ``started`` (``time.time_ns()`` when the chunk's
        work began), and put their contexts in ``outputs``.

        ``origins`` are the chunk's producer contexts (``TraceOrigins.note``; for an idle
        close, with no ``records``, those of the windows it closes); an output
        whose headers carry a context (its origin) gets the context of the ``produce``
        span for its topic and origin instead. ``counts`` become attributes of the chunk
        span.
        """
        links = [context for each in origins if (context := self._context(each)) is not None]
        attributes: dict[str, Any] = {
            tracing.ATTR_SYSTEM: "kafka",
            tracing.ATTR_DESTINATION: self.topic,
            tracing.ATTR_PARTITION: str(self.partition),
            tracing.ATTR_OPERATION_TYPE: "process",
            tracing.ATTR_OPERATION_NAME: "process",
            tracing.ATTR_BATCH_COUNT: len(records),
            **{f"sensorstream.{name}": count for name, count in counts.items()},
        }
        if records:
            attributes["sensorstream.first_offset"] = records[0].offset
            attributes["sensorstream.last_offset"] = records[-1].offset
        else:
            attributes["sensorstream.idle_close"] = True
        chunk = tracing.start_span(
            self._chunk_name,
            kind="consumer",
            links=links,
            attributes=attributes,
            start_time=started,
        )
        chunk_context = chunk.get_span_context()
        by_origin: dict[tuple[bytes, str], tuple[Span, tracing.TraceHeaders]] = {}
        counted: dict[tuple[bytes, str], int] = {}
        for out in outputs:
            traceparent = _traceparent(out.headers)
            if traceparent is None:
                continue
            key = (traceparent, out.topic)
            found = by_origin.get(key)
            if found is None:
                span = tracing.start_span(
                    f"produce {out.topic}",
                    kind="producer",
                    parent=self._context(out.headers),
                    links=[chunk_context],
                    attributes={
                        tracing.ATTR_SYSTEM: "kafka",
                        tracing.ATTR_DESTINATION: out.topic,
                        tracing.ATTR_OPERATION_TYPE: "send",
                        tracing.ATTR_OPERATION_NAME: "produce",
                        "sensorstream.source.topic": self.topic,
                        "sensorstream.source.partition": self.partition,
                    },
                    start_time=started,
                )
                found = by_origin[key] = (span, tracing.inject(span))
                counted[key] = 0
            counted[key] += 1
            headers = found[1]
            if headers:  # sampled: the output continues from this span, not its origin
                out.headers = [
                    *(h for h in out.headers if h[0] not in tracing.TRACE_HEADERS),
                    *headers,
                ]
        return TracedChunk(chunk, [(span, counted[key]) for key, (span, _) in by_origin.items()])


def _traceparent(headers: Sequence[tuple[str, bytes | None]]) -> bytes | None:
    for name, value in headers:
        if name == tracing.TRACEPARENT:
            return value
    return None
