"""OpenTelemetry tracing that travels with the records, in their Kafka headers.

Off unless the environment turns it on. Tracing is on iff ``OTEL_TRACES_EXPORTER``
names at least one exporter other than ``none`` and ``OTEL_SDK_DISABLED`` is not
``true``. (The OpenTelemetry SDK would default an unset ``OTEL_TRACES_EXPORTER`` to
``otlp``; we default to off, so a service never tries to reach a collector nobody
runs.) The rest is the standard ``OTEL_*`` set: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``,
``OTEL_EXPORTER_OTLP_*`` (read by the exporter itself), ``OTEL_BSP_*`` (the batch
span processor). ``docs/tracing.md`` is the user's guide.

What the services use:

- :data:`enabled`, a module flag. Hot code checks it once per batch (``if
  tracing.enabled:``) before any tracing work, so with tracing off nothing here runs
  per record and nothing is allocated for it.
- :func:`configure_tracing` at start-up (the producer's ``run``, the processor's
  ``__main__``), or with an ``exporter`` of one's own (tests, benchmarks).
- :func:`start_span`, :func:`inject` (a span's context as ``traceparent`` /
  ``tracestate`` record headers, only for sampled spans) and :func:`extract` (a
  record's headers back to a span context; ``None`` for none or a malformed one).

Propagation is W3C Trace Context only: the header names are the lowercase
``traceparent`` and ``tracestate``, values ASCII bytes, as the Java and Python Kafka
instrumentations write them. Baggage is not carried.

This module never raises on a record's headers, never logs per record, and never
touches the global ``opentelemetry.propagate`` settings.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import structlog
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sensorstream.schema import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "ATTR_BATCH_COUNT",
    "ATTR_DESTINATION",
    "ATTR_OPERATION_NAME",
    "ATTR_OPERATION_TYPE",
    "ATTR_PARTITION",
    "ATTR_SYSTEM",
    "TRACEPARENT",
    "TRACESTATE",
    "TRACE_HEADERS",
    "TraceHeaders",
    "configure_tracing",
    "disable_tracing",
    "enabled",
    "extract",
    "flush_tracing",
    "inject",
    "record_error",
    "sampler_from_env",
    "start_span",
    "trace_headers",
    "tracing_requested",
]

log = structlog.get_logger("sensorstream.tracing")

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
TRACE_HEADERS: Final = frozenset({TRACEPARENT, TRACESTATE})
"""The record headers that carry a trace context (W3C Trace Context)."""

TraceHeaders = list[tuple[str, bytes]]
"""Kafka record headers, as aiokafka takes them."""

# Messaging semantic conventions (OpenTelemetry semconv 1.26+), the ones we set.
ATTR_SYSTEM: Final = "messaging.system"
ATTR_DESTINATION: Final = "messaging.destination.name"
ATTR_PARTITION: Final = "messaging.destination.partition.id"
ATTR_OPERATION_TYPE: Final = "messaging.operation.type"
ATTR_OPERATION_NAME: Final = "messaging.operation.name"
ATTR_BATCH_COUNT: Final = "messaging.batch.message_count"

enabled: bool = False
"""True once :func:`configure_tracing` turned tracing on; checked before any per-batch work."""

_tracer: Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None
_exit_hook_registered = False
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_KINDS: Final = {
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
    "internal": SpanKind.INTERNAL,
}
_SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_TRUE: Final = frozenset({"true", "1", "yes", "on"})


# --------------------------------------------------------------------------- configuration


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "")
    return [name for part in raw.split(",") if (name := part.strip().lower()) and name != "none"]


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: the process environment) turns tracing on.

    On iff ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none`` and
    ``OTEL_SDK_DISABLED`` is not true (see the module doc).
    """
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    return bool(_exporter_names(environ))


def configure_tracing(
    service: str,
    *,
    version: str | None = None,
    instance: str | None = None,
    environ: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
) -> bool:
    """Turn tracing on if the environment asks for it (or ``exporter`` is given); return
    :data:`enabled`.

    ``service`` is the default ``service.name`` (``OTEL_SERVICE_NAME`` wins). With
    ``exporter`` (tests, benchmarks) spans go there instead of to the exporters
    ``OTEL_TRACES_EXPORTER`` names, and tracing is on whatever that says; the sampler
    still comes from ``OTEL_TRACES_SAMPLER``. Calling it again replaces the previous
    set-up (its spans are flushed first). Raises :class:`ConfigError` naming the
    variable for a bad ``OTEL_*`` value or an exporter that is not installed.
    """
    global _tracer, _provider, enabled
    environ = os.environ if environ is None else environ
    if exporter is None and not tracing_requested(environ):
        disable_tracing()
        return False

    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [exporter] if exporter is not None else _exporters(environ)
    sampler = sampler_from_env(environ)
    ours: dict[str, Any] = {"service.name": service}
    if version is not None:
        ours["service.version"] = version
    if instance is not None:
        ours["service.instance.id"] = instance
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over our defaults.
    detected = OTELResourceDetector().detect()
    resource = Resource.create({**ours, **detected.attributes})
    provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
    for each in exporters:
        provider.add_span_processor(BatchSpanProcessor(each))
    disable_tracing()
    _provider = provider
    _tracer = provider.get_tracer("sensorstream", version)
    _register_exit_hook()
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # A handler's own spans (trace.get_tracer(...)) go to the same place.
        trace.set_tracer_provider(provider)
    enabled = True
    log.info(
        "tracing_enabled",
        service=resource.attributes.get("service.name"),
        exporters=[type(each).__name__ for each in exporters],
        sampler=environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on",
        sampler_arg=environ.get("OTEL_TRACES_SAMPLER_ARG"),
    )
    return True


def disable_tracing() -> None:
    """Flush and shut down the current set-up, if any; tracing is off afterwards."""
    global _tracer, _provider, enabled
    enabled = False
    _tracer = trace.NoOpTracer()
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def flush_tracing(timeout_seconds: float = 5.0) -> bool:
    """Export every finished span now (tests; shutdown); True if all went out in time."""
    if _provider is None:
        return True
    return _provider.force_flush(int(timeout_seconds * 1000))


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        # The batch span processor holds the last few seconds of spans: export them.
        atexit.register(disable_tracing)
        _exit_hook_registered = True


def sampler_from_env(environ: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` / ``_ARG`` name (default ``parentbased_always_on``).

    The parent-based ones treat a root span's links like a parent: a span with no
    parent that links to a sampled context is sampled. So the processor's span for a
    consumed chunk (no parent, one link per producer batch in it) is recorded whenever
    a sampled batch is in it, and its trace is complete at any ratio.
    """
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in _SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER={name!r} is not a sampler we know; use one of "
            f"{', '.join(_SAMPLERS)}"
        )
    root: Sampler
    if name.endswith("traceidratio"):
        root = TraceIdRatioBased(_ratio(environ))
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    else:
        root = ALWAYS_ON
    if name.startswith("parentbased_"):
        return ParentBased(cast("Sampler", _SampledLinksOr(root)))
    return root


def _ratio(environ: Mapping[str, str]) -> float:
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a sampling ratio; set a number from 0 "
            "to 1 (0.01 samples one trace in a hundred)"
        )
    return ratio


class _SampledLinksOr:
    """Root sampler: sample a root span that links to a sampled context, else ask ``root``.

    Duck-typed (``should_sample``, ``get_description``), so that importing this module
    does not import the SDK.
    """

    def __init__(self, root: Sampler) -> None:
        self._root = root

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> Any:
        if links and any(link.context.trace_flags.sampled for link in links):
            from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._root.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"SampledLinksOr{{{self._root.get_description()}}}"


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """One exporter per name in ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or any
    installed ``opentelemetry_traces_exporter`` entry point)."""
    from importlib.metadata import entry_points

    exporters: list[SpanExporter] = []
    for name in _exporter_names(environ):
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp_exporter(environ))
        else:
            found = entry_points(group="opentelemetry_traces_exporter", name=name)
            if not found:
                raise ConfigError(
                    f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed; use otlp, "
                    "console or none, or install the package that provides it"
                )
            exporters.append(next(iter(found)).load()())
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    variable = next(
        (
            name
            for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
            if environ.get(name, "").strip()
        ),
        None,
    )
    protocol = "http/protobuf" if variable is None else environ[variable].strip()
    if protocol == "http/protobuf":
        module, package = "opentelemetry.exporter.otlp.proto.http.trace_exporter", "http"
    elif protocol == "grpc":
        module, package = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "grpc"
    else:
        raise ConfigError(
            f"{variable}={protocol!r} is not supported; use http/protobuf (the default) or grpc"
        )
    try:
        from importlib import import_module

        exporter: SpanExporter = import_module(module).OTLPSpanExporter()
    except ImportError as exc:
        hint = (
            "install the tracing extra: sensorstream-shared[tracing]"
            if package == "http"
            else "install opentelemetry-exporter-otlp-proto-grpc"
        )
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER=otlp over {protocol} needs the OTLP exporter, which is not "
            f"installed; {hint}, or set OTEL_TRACES_EXPORTER=console or none"
        ) from exc
    return exporter


# --------------------------------------------------------------------------- spans and headers


def start_span(
    name: str,
    *,
    kind: Literal["producer", "consumer", "internal"] = "internal",
    parent: SpanContext | None = None,
    links: Iterable[SpanContext] = (),
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
) -> Span:
    """A new span (not made current); call ``end()`` on it. Only when :data:`enabled`.

    ``parent`` continues a trace (a context from :func:`extract` or another span);
    without it the span starts a trace of its own. ``links`` point to other traces'
    spans (a consumed batch's many producers). ``start_time`` in ns since the epoch.
    """
    context = None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
    return _tracer.start_span(
        name,
        context=context,
        kind=_KINDS[kind],
        attributes=attributes,
        links=[Link(each) for each in links],
        start_time=start_time,
    )


def record_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc`` (an exception event and an error status)."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def inject(span: Span) -> TraceHeaders:
    """``span``'s context as record headers; empty unless the span is sampled."""
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return []
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return [(name, value.encode("ascii")) for name, value in carrier.items()]


def trace_headers(headers: Iterable[tuple[str, bytes | None]]) -> TraceHeaders:
    """The trace-context headers among ``headers`` (empty if there are none)."""
    return [(name, value) for name, value in headers if name in TRACE_HEADERS and value is not None]


def extract(headers: Iterable[tuple[str, bytes | None]]) -> SpanContext | None:
    """The (remote) span context that ``headers`` carry, or None if none or malformed."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in TRACE_HEADERS and value is not None:
            carrier[name] = value.decode("ascii", "replace")
    if TRACEPARENT not in carrier:
        return None
    context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None
