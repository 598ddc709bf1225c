"""The processor service: wires settings, logging, the HTTP server, Kafka and the tasks.

Start-up order: logging -> ``/healthz`` up (``/readyz`` 503) -> admin connection ->
output topics ensured from the declared topology (created, checked, the DLQ's size
limit raised if needed), input topic waited for -> the delivery guarantee chosen once
(:class:`AtLeastOnce` or :class:`ExactlyOnce`) -> consumer joins the group -> ready
once the first assignment arrived.

The running service is one ``asyncio.TaskGroup``: the fetch loop (``_fetching``), the
guarantee's background work (the at-least-once committer), the reporter, and one
worker per assigned partition, which group membership (``_membership``) starts and
stops on rebalances. If any of them fails for good, the group cancels the others and
the process exits 1 with one line. Shutdown (SIGTERM/SIGINT): stop fetching, let every
worker finish its chunk in progress, commit, leave the group; exit 0 within
``--shutdown-timeout``, or 1 if it took longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from sensorstream.runtime import (
    EXIT_FATAL,
    ConfigError,
    ObservabilityServer,
    RetriableError,
    RetriesExhaustedError,
    RetryPolicy,
    StopSignal,
    TopicState,
    client_options,
    configure_logging,
    connect_admin,
    ensure_topics,
    instrument_retries,
    kafka_errors,
    named_topology,
    retry,
    startup_policy,
    tracing,
    until_stopped,
)
from sensorstream.schema import Topology

from ._alerts import AlertThresholds
from ._dead_letters import DeadLetterWriter
from ._delivery import AtLeastOnce, DeliveryGuarantee, ExactlyOnce
from ._fetching import Fetcher
from ._handling import HandlerRunner
from ._membership import GroupMembership
from ._metrics import ProcessorMetrics
from ._pipeline import DEFAULT_DLQ_MAX_BYTES, PartitionPipeline, PipelineConfig
from ._worker import WorkerOptions
from .handler import Handler, load_handler
from .settings import ProcessorSettings

__all__ = ["ProcessorService", "pipeline_config", "topology", "tune_gc", "version"]

log = structlog.get_logger("sensorstream.processor")

EXIT_OK = 0
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


def topology(settings: ProcessorSettings) -> Topology:
    """The declared topology with this deployment's names and output layout."""
    return named_topology(
        settings,
        partitions=settings.output_partitions,
        replication_factor=settings.replication_factor,
    )


def pipeline_config(
    settings: ProcessorSettings, *, dlq_max_bytes: int = DEFAULT_DLQ_MAX_BYTES
) -> PipelineConfig:
    """The pure pipeline's configuration from the service settings."""
    return PipelineConfig(
        window_size_ms=round(settings.window_size * 1000),
        allowed_lateness_ms=round(settings.allowed_lateness * 1000),
        max_future_skew_ms=round(settings.max_future_skew * 1000),
        drop_late=settings.drop_late,
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
        dlq_max_bytes=dlq_max_bytes,
        trace_outputs=tracing.enabled,
    )


class _InputTopicMissingError(RetriableError):
    """The input topic does not exist (yet): the producers create it."""


class ProcessorService:
    """One processor process: run it with ``await ProcessorService(settings).run(stop)``."""

    def __init__(self, settings: ProcessorSettings, metrics: ProcessorMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ProcessorMetrics(version=version())
        self._membership: GroupMembership | None = None
        self._deadline: float | None = None
        """When a SIGTERM shutdown must be over (monotonic); None until one starts."""
        self._policy = RetryPolicy(budget=settings.retry_budget)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        membership = self._membership
        if membership is None:
            return False, {"state": "starting"}
        ready = membership.assigned_once
        return ready, {
            "state": "ready" if ready else "joining",
            "assigned_partitions": sorted(tp.partition for tp in membership.workers),
            "guarantee": self.settings.guarantee,
        }

    async def run(self, stop: StopSignal) -> int:
        settings = self.settings
        handler = load_handler(settings.handler) if settings.handler else None
        server = ObservabilityServer.from_settings(settings, readiness=self.readiness)
        await server.start()
        instrument_retries(self.metrics.retries)
        self.metrics.up.set(1)
        log.info(
            "processor_starting",
            metrics_port=server.bound_port,
            settings=settings.public_dict(),
        )
        admin: AIOKafkaAdminClient | None = None
        try:
            admin = await until_stopped(stop, connect_admin(settings))
            if admin is None:
                return EXIT_OK
            dlq_limit = await self._prepare_topics(admin, stop)
            if stop.is_set():
                return EXIT_OK
            if handler is not None:
                await _call_optional(handler, "start")
            tune_gc()
            return await self._consume(admin, handler, stop, dlq_limit)
        finally:
            self.metrics.up.set(0)
            if handler is not None:
                await _call_optional(handler, "stop")
            if admin is not None:
                await admin.close()
            await server.stop()

    async def _prepare_topics(self, admin: AIOKafkaAdminClient, stop: StopSignal) -> int:
        """Ensure the output topics, wait for the input topic; return the DLQ's size limit."""
        settings = self.settings
        declared = topology(settings)
        states = await ensure_topics(
            admin,
            declared.outputs,
            bootstrap=settings.bootstrap_servers,
            policy=startup_policy(settings),
        )
        dlq = next(state for state in states if state.spec.role == "dlq")
        await self._wait_for_input(admin, stop)
        return _dlq_limit(dlq)

    async def _wait_for_input(self, admin: AIOKafkaAdminClient, stop: StopSignal) -> None:
        """The input topic belongs to the producers: wait for it rather than guess its layout."""
        settings = self.settings
        waited = False

        async def exists() -> None:
            nonlocal waited
            with kafka_errors("listing topics"):
                topics = await admin.list_topics()
            if settings.topic in topics or stop.is_set():
                return
            message = (
                f"input topic {settings.topic!r} does not exist; create it (or start the "
                "producer) or set --topic / SENSORSTREAM_TOPIC"
            )
            if not settings.wait_for_topic:
                raise ConfigError(message)
            if not waited:
                log.warning("input_topic_missing", topic=settings.topic, waiting=True)
                waited = True
            raise _InputTopicMissingError(message)

        try:
            await retry("wait for the input topic", exists, policy=startup_policy(settings))
        except RetriesExhaustedError as exc:
            if isinstance(exc.__cause__, _InputTopicMissingError):
                raise ConfigError(str(exc.__cause__)) from exc
            raise
        if waited:
            log.info("input_topic_appeared", topic=settings.topic)

    def _guarantee(
        self, consumer: AIOKafkaConsumer, options: dict[str, Any], dlq_limit: int
    ) -> DeliveryGuarantee:
        settings = self.settings
        common: dict[str, Any] = {
            "producer_options": options,
            "max_request_size": max(dlq_limit, DEFAULT_DLQ_MAX_BYTES),
            "dead_letters": DeadLetterWriter(
                topic=settings.dlq_topic, instance=settings.instance_id, max_bytes=dlq_limit
            ),
            "commit_interval": settings.commit_interval,
            "policy": self._policy,
            "startup": startup_policy(settings),
            "metrics": self.metrics,
        }
        if settings.guarantee == "exactly_once":
            return ExactlyOnce(group_id=settings.group_id, **common)
        return AtLeastOnce(consumer, **common)

    async def _consume(
        self, admin: AIOKafkaAdminClient, handler: Handler | None, stop: StopSignal, dlq_limit: int
    ) -> int:
        settings = self.settings
        options = client_options(settings)
        config = pipeline_config(settings, dlq_max_bytes=dlq_limit)
        read_committed = settings.guarantee == "exactly_once"
        consumer = AIOKafkaConsumer(
            **options,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_poll_records=settings.max_batch,
            fetch_min_bytes=settings.fetch_min_bytes,
            fetch_max_wait_ms=round(settings.fetch_max_wait * 1000),
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
            max_poll_interval_ms=int(settings.max_poll_interval * 1000),
            rebalance_timeout_ms=int(settings.max_poll_interval * 1000),
        )
        guarantee = self._guarantee(consumer, options, dlq_limit)
        fetcher = Fetcher(
            consumer,
            max_batch=settings.max_batch,
            partition_buffer=settings.partition_buffer,
            fetch_max_wait=settings.fetch_max_wait,
            read_committed=read_committed,
            policy=self._policy,
            metrics=self.metrics,
        )
        runner = None
        if handler is not None:
            runner = self._handler_runner(handler)
        status = EXIT_OK
        try:
            await guarantee.start()
            await retry("start consumer", lambda: _start(consumer), policy=startup_policy(settings))
            async with asyncio.TaskGroup() as tasks:
                membership = GroupMembership(
                    consumer=consumer,
                    admin=admin,
                    group_id=settings.group_id,
                    guarantee=guarantee,
                    fetcher=fetcher,
                    pipeline_config=config,
                    worker_options=WorkerOptions(
                        max_batch=settings.max_batch, idle_timeout=settings.idle_timeout
                    ),
                    handler_runner=runner,
                    metrics=self.metrics,
                    spawn=tasks.create_task,
                    # The rebalance waits for us: finish in-flight chunks only, bounded
                    # well below the rebalance timeout; buffered records are re-fetched.
                    revoke_grace=min(settings.max_poll_interval, settings.shutdown_timeout) / 2,
                    restore_policy=RetryPolicy(
                        budget=min(settings.retry_budget, settings.max_poll_interval / 2)
                    ),
                )
                self._membership = membership
                consumer.subscribe([settings.topic], listener=membership)
                tasks.create_task(guarantee.run(stop.event), name="committer")
                tasks.create_task(self._report(fetcher, membership, stop.event), name="reporter")
                await fetcher.run(stop.event, membership.check)
                status = await self._shutdown(membership)
        finally:
            status = await self._close_clients(consumer, guarantee, status)
        log.info("consumer_stopped")
        return status

    async def _close_clients(self, consumer: Any, guarantee: Any, status: int) -> int:
        """Stop the consumer (leaving the group) and the outputs; ``status``, or 1 if the
        outputs did not close in time.

        What is left of --shutdown-timeout bounds both: a broker that stopped answering
        must not keep the process from exiting.
        """
        deadline = self._deadline or time.monotonic() + 10.0
        closing = max(1.0, deadline - time.monotonic()) / 2
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), timeout=closing)
        try:
            await asyncio.wait_for(guarantee.stop(), timeout=closing)
        except TimeoutError:
            # Committed work was acknowledged before its commit: nothing is lost here.
            log.error("outputs_close_timed_out", timeout=round(closing, 1))
            return EXIT_FATAL
        return status

    def _handler_runner(self, handler: Handler) -> Any:
        settings = self.settings
        metrics = self.metrics

        def make(pipeline: PartitionPipeline) -> HandlerRunner:
            return HandlerRunner(
                handler,
                retries=settings.handler_retries,
                backoff=settings.handler_backoff,
                instance=settings.instance_id,
                dead_letters=pipeline.dead_letters,
                duration=metrics.handler_duration,
                retried=metrics.retried,
            )

        return make

    async def _shutdown(self, membership: GroupMembership) -> int:
        """Drain and commit every worker within the shutdown timeout; 1 if it took longer."""
        settings = self.settings
        log.info("processor_stopping", reason="signal")
        started = time.monotonic()
        self._deadline = started + settings.shutdown_timeout
        try:
            # The rest of the timeout is for closing the clients (see _consume).
            await asyncio.wait_for(
                membership.leave(grace=settings.shutdown_timeout / 2),
                timeout=settings.shutdown_timeout * 0.7,
            )
        except TimeoutError:
            membership.cancel_all()
            log.error("shutdown_timed_out", timeout=settings.shutdown_timeout)
            return EXIT_FATAL
        log.info("processor_stopped", took=round(time.monotonic() - started, 3))
        return EXIT_OK

    async def _report(
        self, fetcher: Fetcher, membership: GroupMembership, stop: asyncio.Event
    ) -> None:
        """Lag gauges every second; one summary log line every ``summary_interval``."""
        metrics = self.metrics
        last_summary = time.monotonic()
        last_processed = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_LAG_INTERVAL)
            lag_events, lag_seconds = fetcher.update_lag()
            metrics.open_windows.set(
                sum(w.pipeline.open_windows for w in membership.workers.values())
            )
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
                    partitions=sorted(tp.partition for tp in membership.workers),
                    paused=fetcher.paused,
                )
                last_summary = now
                last_processed = processed


def _dlq_limit(state: TopicState) -> int:
    """The record size the DLQ takes: its max.message.bytes (at least 4 KiB)."""
    limit = state.config_int("max.message.bytes")
    return max(4096, limit if limit is not None else DEFAULT_DLQ_MAX_BYTES)


async def _start(consumer: AIOKafkaConsumer) -> None:
    with kafka_errors("starting the consumer"):
        await consumer.start()


async def _call_optional(handler: Handler, name: str) -> None:
    method = getattr(handler, name, None)
    if method is not None:
        await method()


def configure_tracing(settings: ProcessorSettings) -> None:
    """Tracing as the ``OTEL_*`` environment asks (off by default; docs/tracing.md).

    Raises ``ConfigError`` for a bad ``OTEL_*`` value: call it where that exits 2.
    """
    tracing.configure_tracing(
        settings.service_name, version=version(), instance=settings.instance_id
    )


def configure(settings: ProcessorSettings) -> None:
    configure_logging(
        service=settings.service_name,
        version=version(),
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
        secrets=settings.secret_values(),
    )
