"""Specification of tracing through Kafka headers (sensorstream.runtime.tracing)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from structlog.testing import capture_logs

from sensorstream.runtime import tracing
from sensorstream.schema import ConfigError

SAMPLED_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "opaque")]),
)
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def tracing_off_afterwards() -> Iterator[None]:
    """Each test starts and ends with tracing off."""
    tracing.disable_tracing()
    yield
    tracing.disable_tracing()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Tracing on, every span sampled, spans in memory."""
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test-service", exporter=exporter, environ={})
    return exporter


def finished(exporter: InMemorySpanExporter) -> list[str]:
    assert tracing.flush_tracing()
    return [span.name for span in exporter.get_finished_spans()]


class TestTracingRequested:
    @pytest.mark.parametrize(
        "environ",
        [
            {},
            {"OTEL_TRACES_EXPORTER": ""},
            {"OTEL_TRACES_EXPORTER": "none"},
            {"OTEL_TRACES_EXPORTER": " NONE "},
            {"OTEL_TRACES_EXPORTER": "none,none"},
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"},
            {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
        ],
    )
    def test_off(self, environ: dict[str, str]) -> None:
        """Off unless an exporter other than none is named and the SDK is not disabled."""
        assert not tracing.tracing_requested(environ)

    @pytest.mark.parametrize(
        "environ",
        [
            {"OTEL_TRACES_EXPORTER": "otlp"},
            {"OTEL_TRACES_EXPORTER": "console"},
            {"OTEL_TRACES_EXPORTER": "none,console"},
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"},
        ],
    )
    def test_on(self, environ: dict[str, str]) -> None:
        """An exporter named (and the SDK not disabled) turns tracing on."""
        assert tracing.tracing_requested(environ)


class TestConfigureTracing:
    def test_an_unset_environment_leaves_tracing_off(self) -> None:
        """No OTEL_* at all: off, and spans are the no-op kind that records nothing."""
        assert not tracing.configure_tracing("svc", environ={})

        span = tracing.start_span("produce x")

        assert (False, False) == (tracing.enabled, span.is_recording())
        assert [] == tracing.inject(span)

    def test_a_named_exporter_turns_tracing_on(self) -> None:
        """OTEL_TRACES_EXPORTER=console: on, and the start-up says so in the log."""
        with capture_logs() as logs:
            assert tracing.configure_tracing("svc", environ={"OTEL_TRACES_EXPORTER": "console"})

        assert tracing.enabled
        [event] = [e for e in logs if e["event"] == "tracing_enabled"]
        assert ["ConsoleSpanExporter"] == event["exporters"]

    def test_disabling_turns_it_off_again(self, spans: InMemorySpanExporter) -> None:
        """After disable_tracing nothing is recorded any more."""
        tracing.disable_tracing()

        tracing.start_span("late").end()

        assert not tracing.enabled
        assert [] == finished(spans)

    def test_the_service_name_is_the_default(self, spans: InMemorySpanExporter) -> None:
        """Without OTEL_SERVICE_NAME spans are the given service's."""
        tracing.start_span("a").end()
        tracing.flush_tracing()

        [span] = spans.get_finished_spans()
        assert "test-service" == span.resource.attributes["service.name"]

    def test_otel_service_name_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_SERVICE_NAME overrides the service's own name."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "renamed")
        exporter = InMemorySpanExporter()
        tracing.configure_tracing("svc", version="1.2.3", exporter=exporter, environ={})

        tracing.start_span("a").end()
        tracing.flush_tracing()

        [span] = exporter.get_finished_spans()
        assert ("renamed", "1.2.3") == (
            span.resource.attributes["service.name"],
            span.resource.attributes["service.version"],
        )

    @pytest.mark.parametrize(
        ("environ", "variable"),
        [
            ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
            (
                {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                {
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": "1.5",
                },
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            ({"OTEL_TRACES_EXPORTER": "carrier-pigeon"}, "OTEL_TRACES_EXPORTER"),
            (
                {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "smoke"},
                "OTEL_EXPORTER_OTLP_PROTOCOL=",
            ),
            (
                {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "smoke"},
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=",
            ),
        ],
    )
    def test_a_bad_value_names_its_variable(self, environ: dict[str, str], variable: str) -> None:
        """A bad OTEL_* value is a ConfigError that names the variable, and tracing stays off."""
        environ = {"OTEL_TRACES_EXPORTER": "console", **environ}

        with pytest.raises(ConfigError, match=variable):
            tracing.configure_tracing("svc", environ=environ)

        assert not tracing.enabled

    def test_otlp_without_its_exporter_says_what_to_install(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """otlp over HTTP without the exporter package: the error names the tracing extra."""
        module = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
        monkeypatch.setitem(sys.modules, module, None)  # makes importing it fail

        with pytest.raises(ConfigError, match=r"sensorstream-shared\[tracing\]"):
            tracing.configure_tracing("svc", environ={"OTEL_TRACES_EXPORTER": "otlp"})


class TestSampling:
    def configure(self, **environ: str) -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        tracing.configure_tracing("svc", exporter=exporter, environ=environ)
        return exporter

    def test_a_ratio_of_zero_samples_no_root(self) -> None:
        """parentbased_traceidratio at 0: a new trace is not sampled, so nothing to inject."""
        self.configure(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")

        span = tracing.start_span("root")

        assert not span.get_span_context().trace_flags.sampled
        assert [] == tracing.inject(span)

    def test_a_sampled_parent_is_followed_at_any_ratio(self) -> None:
        """The producer decided: a span under a sampled remote parent is sampled."""
        self.configure(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")

        span = tracing.start_span("child", parent=SAMPLED_PARENT)

        assert span.get_span_context().trace_flags.sampled

    def test_a_root_linked_to_a_sampled_context_is_sampled(self) -> None:
        """A chunk span (no parent, links to its batches) is sampled if one batch was."""
        self.configure(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")

        span = tracing.start_span("chunk", links=[SAMPLED_PARENT])

        assert span.get_span_context().trace_flags.sampled

    def test_always_off_ignores_links_and_parents(self) -> None:
        """A sampler that is not parent-based decides alone."""
        self.configure(OTEL_TRACES_SAMPLER="always_off")

        linked = tracing.start_span("chunk", links=[SAMPLED_PARENT])
        child = tracing.start_span("child", parent=SAMPLED_PARENT)

        assert (False, False) == (
            linked.get_span_context().trace_flags.sampled,
            child.get_span_context().trace_flags.sampled,
        )


class TestHeaders:
    def test_inject_extract_round_trip(self, spans: InMemorySpanExporter) -> None:
        """A span's headers give back its context, remote and sampled."""
        span = tracing.start_span("produce x", kind="producer")

        context = tracing.extract(tracing.inject(span))

        assert context is not None
        expected = span.get_span_context()
        assert (expected.trace_id, expected.span_id, True, True) == (
            context.trace_id,
            context.span_id,
            context.is_remote,
            context.trace_flags.sampled,
        )

    def test_the_headers_are_w3c_trace_context(self, spans: InMemorySpanExporter) -> None:
        """traceparent is version-trace-span-flags in ASCII; tracestate is carried on."""
        span = tracing.start_span("child", parent=SAMPLED_PARENT)
        context = span.get_span_context()

        headers = dict(tracing.inject(span))

        assert {
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-".encode(),
            "tracestate": b"vendor=opaque",
        } == {**headers, "traceparent": headers["traceparent"][:53]}
        assert headers["traceparent"][53:] in {b"01", b"03"}  # sampled (and random)

    def test_a_child_continues_the_extracted_trace(self, spans: InMemorySpanExporter) -> None:
        """A span started from extracted headers is in their trace, under their span."""
        parent = tracing.extract([("other", b"x"), ("traceparent", TRACEPARENT)])
        assert parent is not None

        span = tracing.start_span("child", parent=parent)
        span.end()
        tracing.flush_tracing()

        [done] = spans.get_finished_spans()
        assert done.parent is not None
        assert (SAMPLED_PARENT.trace_id, SAMPLED_PARENT.span_id) == (
            done.context.trace_id,
            done.parent.span_id,
        )

    def test_links_are_recorded(self, spans: InMemorySpanExporter) -> None:
        """Links given at the start are on the finished span."""
        tracing.start_span("chunk", links=[SAMPLED_PARENT]).end()
        tracing.flush_tracing()

        [done] = spans.get_finished_spans()
        assert [SAMPLED_PARENT.span_id] == [link.context.span_id for link in done.links]

    def test_an_unsampled_span_injects_nothing(self, spans: InMemorySpanExporter) -> None:
        """Only sampled spans are propagated: an unsampled batch carries no header."""
        unsampled = NonRecordingSpan(
            SpanContext(
                trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT)
            )
        )

        assert [] == tracing.inject(unsampled)

    @pytest.mark.parametrize(
        "headers",
        [
            [],
            [("other", b"x")],
            [("traceparent", None)],
            [("traceparent", b"garbage")],
            [("traceparent", b"00-00000000000000000000000000000000-b7ad6b7169203331-01")],
            [("traceparent", b"\xff\xfe")],
            [("tracestate", b"vendor=opaque")],
        ],
    )
    def test_no_or_a_malformed_context_extracts_none(
        self, headers: list[tuple[str, bytes | None]]
    ) -> None:
        """extract never raises: headers without a valid traceparent give None."""
        assert tracing.extract(headers) is None

    def test_trace_headers_picks_the_trace_context(self) -> None:
        """trace_headers keeps traceparent and tracestate, in order, and nothing else."""
        headers = [
            ("sensorstream.dlq.reason", b"not_json"),
            ("traceparent", TRACEPARENT),
            ("tracestate", b"vendor=opaque"),
            ("baggage", b"k=v"),
        ]

        assert [("traceparent", TRACEPARENT), ("tracestate", b"vendor=opaque")] == (
            tracing.trace_headers(headers)
        )


class TestSpans:
    def test_record_error_marks_the_span_failed(self, spans: InMemorySpanExporter) -> None:
        """record_error sets an error status naming the exception and records it as an event."""
        span = tracing.start_span("produce x")

        tracing.record_error(span, ValueError("broken"))
        span.end()
        tracing.flush_tracing()

        [done] = spans.get_finished_spans()
        assert ("ERROR", "ValueError: broken", ["exception"]) == (
            done.status.status_code.name,
            done.status.description,
            [event.name for event in done.events],
        )

    def test_kind_and_start_time_are_kept(self, spans: InMemorySpanExporter) -> None:
        """start_span passes the kind and an explicit start time through."""
        tracing.start_span("p", kind="consumer", start_time=1_700_000_000_000_000_000).end()
        tracing.flush_tracing()

        [done] = spans.get_finished_spans()
        assert ("CONSUMER", 1_700_000_000_000_000_000) == (done.kind.name, done.start_time)
