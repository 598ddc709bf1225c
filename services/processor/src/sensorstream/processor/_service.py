"""The processor service: wires settings, logging, the HTTP server, Kafka and the workers.

Start-up order: logging -> ``/healthz`` up (``/readyz`` 503) -> admin connection ->
output topics ensured, input topic checked -> consumer joins the group -> ready once
the first assignment arrived. Shutdown (SIGTERM/SIGINT): stop fetching, let every
worker finish its chunk in progress, commit, leave the group, exit 0 within
``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import time
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from sensorstream.runtime import (
    ConfigError,
    FatalError,
    ObservabilityServer,
    StopSignal,
    client_options,
    configure_logging,
    connect_admin,
    ensure_topics,
    startup_policy,
)
from sensorstream.schema import TOPOLOGY

from ._alerts import AlertThresholds
from ._consumer import ProcessorConsumer
from ._metrics import ProcessorMetrics
from ._pipeline import PipelineConfig
from .handler import Handler, load_handler
from .settings import ProcessorSettings

__all__ = ["ProcessorService", "pipeline_config", "tune_gc", "version"]

log = structlog.get_logger("sensorstream.processor")

_LAG_INTERVAL = 1.0
# Every event allocates a few short-lived objects (record, dict, reading) and none of
# them form reference cycles; at the default gen-0 threshold (700) the collector runs
# every ~200 events and took about a third of the pipeline's CPU (bench_pipeline_core).
_GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated and collect young objects far less often."""
    gc.collect()
    gc.freeze()  # start-up objects live forever: keep them out of every later collection
    gc.set_threshold(*_GC_THRESHOLDS)


def version() -> str:
    try:
        return importlib.metadata.version("sensorstream-processor")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def pipeline_config(settings: ProcessorSettings) -> PipelineConfig:
    """The pure pipeline's configuration from the service settings."""
    return PipelineConfig(
        window_size_ms=round(settings.window_size * 1000),
        allowed_lateness_ms=round(settings.allowed_lateness * 1000),
        idle_timeout_s=settings.idle_timeout,
        dead_letter_late=settings.dead_letter_late,
        thresholds=AlertThresholds(
            temperature_high=settings.temperature_high,
            temperature_low=settings.temperature_low,
            humidity_high=settings.humidity_high,
            humidity_low=settings.humidity_low,
            temperature_hysteresis=settings.temperature_hysteresis,
            humidity_hysteresis=settings.humidity_hysteresis,
        ),
        instance=settings.instance_id,
        aggregates_topic=settings.aggregates_topic,
        alerts_topic=settings.alerts_topic,
        dlq_topic=settings.dlq_topic,
    )


class ProcessorService:
    """One processor process: run it with ``await ProcessorService(settings).run(stop)``."""

    def __init__(self, settings: ProcessorSettings, metrics: ProcessorMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ProcessorMetrics(version=version())
        self._consumer: ProcessorConsumer | None = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        consumer = self._consumer
        if consumer is None:
            return False, {"state": "starting"}
        ready = consumer.assigned_once
        return ready, {
            "state": "ready" if ready else "joining",
            "assigned_partitions": sorted(tp.partition for tp in consumer.workers),
            "guarantee": self.settings.guarantee,
        }

    async def run(self, stop: StopSignal) -> int:
        settings = self.settings
        handler = load_handler(settings.handler) if settings.handler else None
        server = ObservabilityServer(
            host=settings.metrics_host, port=settings.metrics_port, readiness=self.readiness
        )
        await server.start()
        self.metrics.up.set(1)
        log.info(
            "processor_starting",
            metrics_port=server.bound_port,
            settings=settings.public_dict(),
        )
        admin: AIOKafkaAdminClient | None = None
        try:
            admin = await connect_admin(settings)
            await self._prepare_topics(admin, stop)
            if stop.is_set():
                return 0
            if handler is not None:
                await _call_optional(handler, "start")
            tune_gc()
            return await self._consume(admin, handler, stop)
        finally:
            self.metrics.up.set(0)
            if handler is not None:
                await _call_optional(handler, "stop")
            if admin is not None:
                await admin.close()
            await server.stop()

    async def _prepare_topics(self, admin: AIOKafkaAdminClient, stop: StopSignal) -> None:
        settings = self.settings
        declared = TOPOLOGY.configured(
            partitions=settings.output_partitions,
            replication_factor=settings.replication_factor,
            names={
                "aggregates": settings.aggregates_topic,
                "alerts": settings.alerts_topic,
                "dlq": settings.dlq_topic,
            },
        )
        await ensure_topics(
            admin,
            declared.outputs,
            bootstrap=settings.bootstrap_servers,
            policy=startup_policy(settings),
        )
        # The input topic belongs to the producers: wait for it rather than guess its layout.
        deadline = time.monotonic() + settings.startup_timeout
        waited = False
        while not stop.is_set():
            try:
                topics = await admin.list_topics()
            except KafkaError as exc:
                raise FatalError(f"cannot list topics: {exc}") from exc
            if settings.topic in topics:
                if waited:
                    log.info("input_topic_appeared", topic=settings.topic)
                return
            if not settings.wait_for_topic or time.monotonic() >= deadline:
                raise ConfigError(
                    f"input topic {settings.topic!r} does not exist; create it (or start the "
                    "producer) or set --topic / SENSORSTREAM_TOPIC"
                )
            if not waited:
                log.warning("input_topic_missing", topic=settings.topic, waiting=True)
                waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _consume(
        self, admin: AIOKafkaAdminClient, handler: Handler | None, stop: StopSignal
    ) -> int:
        settings = self.settings
        consumer = ProcessorConsumer(
            settings,
            client_options=client_options(settings),
            admin=admin,
            pipeline_config=pipeline_config(settings),
            metrics=self.metrics,
            handler=handler,
        )
        await consumer.start()
        self._consumer = consumer
        reporter = asyncio.create_task(self._report(consumer, stop.event), name="reporter")
        try:
            await consumer.run(stop.event)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            log.info("processor_stopping", reason=stop.signal_name or "error")
            started = time.monotonic()
            try:
                await asyncio.wait_for(
                    consumer.shutdown(grace=settings.shutdown_timeout / 2),
                    timeout=settings.shutdown_timeout,
                )
            except TimeoutError:
                log.error("shutdown_timed_out", timeout=settings.shutdown_timeout)
            log.info("processor_stopped", took=round(time.monotonic() - started, 3))
        return 0

    async def _report(self, consumer: ProcessorConsumer, stop: asyncio.Event) -> None:
        """Lag gauges every second; one summary log line every ``summary_interval``."""
        metrics = self.metrics
        last_summary = time.monotonic()
        last_processed = 0
        while not stop.is_set():
            await asyncio.sleep(_LAG_INTERVAL)
            lag_events, lag_seconds = consumer.update_lag()
            now = time.monotonic()
            if now - last_summary >= self.settings.summary_interval:
                outcomes = metrics.outcome_totals()
                processed = sum(outcomes[name] for name in ("ok", "invalid", "late", "replayed"))
                log.info(
                    "processor_summary",
                    rate=round((processed - last_processed) / (now - last_summary), 1),
                    events=processed,
                    **outcomes,
                    lag_events=lag_events,
                    lag_seconds=round(lag_seconds, 3),
                    partitions=sorted(tp.partition for tp in consumer.workers),
                    paused=len(consumer.paused),
                )
                last_summary = now
                last_processed = processed


async def _call_optional(handler: Handler, name: str) -> None:
    method = getattr(handler, name, None)
    if method is not None:
        await method()


def configure(settings: ProcessorSettings) -> None:
    configure_logging(
        service=settings.service_name,
        version=version(),
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
    )
