"""The sink service: wires settings, logging, the HTTP server, PostgreSQL, Kafka and the loop.

Start-up order: logging -> ``/healthz`` up (``/readyz`` 503) -> database connected and
migrated (retried while it is unreachable, ``--database-retry-budget``) -> Kafka admin
connection -> both topics waited for (they belong to the processor) -> consumer joins
the group -> ready once the database is connected and the first assignment arrived.

The running service is one ``asyncio.TaskGroup``: the loop (``_loop.SinkLoop``) and the
reporter (lag gauges, summary line). Shutdown (SIGTERM/SIGINT): the loop writes the
batch it holds (or gives it up if the database does not take it within half of
``--shutdown-timeout``), commits what the database committed, the consumer leaves the
group, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import time
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from sensorstream.runtime import (
    ConfigError,
    FatalError,
    ObservabilityServer,
    RetriableError,
    RetriesExhaustedError,
    RetryPolicy,
    StopSignal,
    client_options,
    configure_logging,
    connect_admin,
    instrument_retries,
    kafka_errors,
    retry,
    startup_policy,
    until_stopped,
)

from ._batch import Role
from ._database import PostgresStore
from ._loop import SinkLoop, SinkMembership
from ._metrics import SinkMetrics
from .settings import SinkSettings

__all__ = ["SinkService", "configure", "version"]

log = structlog.get_logger("sensorstream.sink")

EXIT_OK: Final = 0
_LAG_INTERVAL: Final = 1.0
# Each record allocates a few short-lived objects and none form cycles (as in the
# processor): collect the young generation far less often than every 700 allocations.
_GC_THRESHOLDS: Final = (50_000, 20, 100)


def version() -> str:
    try:
        return importlib.metadata.version("sensorstream-sink")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class _TopicsMissingError(RetriableError):
    """A topic to consume does not exist (yet): the processor creates it."""


class SinkService:
    """One sink process: run it with ``await SinkService(settings).run(stop)``."""

    def __init__(self, settings: SinkSettings, metrics: SinkMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or SinkMetrics(version=version())
        self.topics: dict[Role, str] = {
            "aggregates": settings.aggregates_topic,
            "alerts": settings.alerts_topic,
        }
        self._store = PostgresStore(settings, self.metrics, topics=self.topics)
        self._membership: SinkMembership | None = None
        self._stopping = False

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        store, membership = self._store, self._membership
        schema = store.schema
        details: dict[str, Any] = {
            "database": "connected" if store.connected else "disconnected",
            "schema": None
            if schema is None
            else {"version": schema.version, "layout": schema.layout},
        }
        if membership is None:
            return False, {"state": "starting", **details}
        ready = store.connected and membership.assigned_once and not self._stopping
        state = "ready" if ready else "stopping" if self._stopping else "waiting"
        return ready, {"state": state, "assigned_partitions": membership.by_role(), **details}

    def _database_policy(self) -> RetryPolicy:
        return RetryPolicy(budget=self.settings.database_retry_budget, wait_max=5.0)

    async def run(self, stop: StopSignal) -> int:
        settings = self.settings
        server = ObservabilityServer.from_settings(settings, readiness=self.readiness)
        await server.start()
        instrument_retries(self.metrics.retries)
        self.metrics.up.set(1)
        log.info("sink_starting", metrics_port=server.bound_port, settings=settings.public_dict())
        try:
            if await until_stopped(stop, self._prepare_database()) is None:
                return EXIT_OK
            admin = await until_stopped(stop, connect_admin(settings))
            if admin is None:
                return EXIT_OK
            try:
                if await until_stopped(stop, self._wait_for_topics(admin)) is None:
                    return EXIT_OK
            finally:
                await admin.close()
            _tune_gc()
            return await self._consume(stop)
        finally:
            self.metrics.up.set(0)
            await self._store.close()
            await server.stop()

    async def _prepare_database(self) -> bool:
        """Connect and migrate, retrying an unreachable database."""
        settings = self.settings
        try:
            await retry(
                "database",
                lambda: self._store.migrate(settings.timescaledb),
                policy=self._database_policy(),
            )
        except RetriesExhaustedError as exc:
            raise FatalError(
                f"cannot reach PostgreSQL at {settings.database_address()} within "
                f"{settings.database_retry_budget:g} s (last error: {exc.__cause__}). Is it "
                "running? Set --database-url / SENSORSTREAM_DATABASE_URL (or --database-host "
                "and --database-port), or raise SENSORSTREAM_DATABASE_RETRY_BUDGET."
            ) from exc
        return True

    async def _wait_for_topics(self, admin: AIOKafkaAdminClient) -> bool:
        """Both topics belong to the processor: wait for them rather than guess their layout."""
        settings = self.settings
        wanted = sorted(set(self.topics.values()))
        waited = False

        async def exist() -> None:
            nonlocal waited
            with kafka_errors("listing topics"):
                topics = await admin.list_topics()
            missing = [topic for topic in wanted if topic not in topics]
            if not missing:
                return
            if not waited:
                log.warning("topics_missing", topics=missing, waiting=True)
                waited = True
            raise _TopicsMissingError(
                f"topic(s) {', '.join(missing)} do not exist; start the processor (it creates "
                "them) or set --aggregates-topic / SENSORSTREAM_AGGREGATES_TOPIC and "
                "--alerts-topic / SENSORSTREAM_ALERTS_TOPIC"
            )

        try:
            await retry("wait for the topics", exist, policy=startup_policy(settings))
        except RetriesExhaustedError as exc:
            if isinstance(exc.__cause__, _TopicsMissingError):
                raise ConfigError(str(exc.__cause__)) from exc
            raise
        if waited:
            log.info("topics_appeared", topics=wanted)
        return True

    async def _consume(self, stop: StopSignal) -> int:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Aggregates and alerts of aborted processor transactions (exactly-once) never
            # reach the database.
            isolation_level="read_committed",
            max_poll_records=settings.batch_size,
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
            max_poll_interval_ms=int(settings.max_poll_interval * 1000),
            rebalance_timeout_ms=int(settings.max_poll_interval * 1000),
        )
        grace = settings.shutdown_timeout / 2
        loop = SinkLoop(
            consumer,
            self._store,
            topics=self.topics,
            batch_size=settings.batch_size,
            batch_time=settings.batch_time,
            database_policy=self._database_policy(),
            commit_policy=RetryPolicy(budget=settings.retry_budget),
            shutdown_grace=grace,
            metrics=self.metrics,
        )
        membership = SinkMembership(
            loop,
            topics=self.topics,
            metrics=self.metrics,
            grace=min(settings.max_poll_interval, settings.shutdown_timeout) / 2,
        )
        try:
            await retry("start consumer", lambda: _start(consumer), policy=startup_policy(settings))
            consumer.subscribe(sorted(set(self.topics.values())), listener=membership)
            self._membership = membership
            done = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._report(loop, done), name="reporter")
                try:
                    await loop.run(stop.event)
                finally:
                    done.set()
            self._stopping = True
            log.info(
                "sink_stopped",
                reason=stop.signal_name or "stopped",
                batches=loop.batches,
                rows=loop.rows_written,
                uncommitted_partitions=len(loop.pending),
            )
        finally:
            self._stopping = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), timeout=grace)
        return EXIT_OK

    async def _report(self, loop: SinkLoop, done: asyncio.Event) -> None:
        """Lag gauges every second; one summary log line every ``summary_interval``."""
        last_summary = time.monotonic()
        last_rows = 0
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=_LAG_INTERVAL)
            lag = loop.update_lag()
            now = time.monotonic()
            if now - last_summary >= self.settings.summary_interval:
                log.info(
                    "sink_summary",
                    rows_per_second=round(
                        (loop.rows_written - last_rows) / (now - last_summary), 1
                    ),
                    rows=loop.rows_written,
                    batches=loop.batches,
                    lag_records=lag,
                    database="connected" if self._store.connected else "disconnected",
                )
                last_summary, last_rows = now, loop.rows_written


async def _start(consumer: AIOKafkaConsumer) -> None:
    with kafka_errors("starting the consumer"):
        await consumer.start()


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def configure(settings: SinkSettings) -> None:
    configure_logging(
        service=settings.service_name,
        version=version(),
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
        secrets=settings.secret_values(),
    )
