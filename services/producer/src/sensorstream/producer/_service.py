"""The producer service: settings in, a paced stream of sensor readings out, exit code back.

Start-up: logging, the observability server, the topic (created if missing), each
sensor's next ``seq`` read from the topic (``--resume-seq``, ``_resume.py``), the Kafka
producer (each retried for ``startup_timeout``). Then one loop on one task: every tick it
asks the pacer how many events are due, generates and encodes them in one call, and
hands them to the sender in per-partition batches; there is never an await per event.
A reporter task updates the rate gauges every second and logs a summary line every
``summary_interval``.

While the broker is away the sender waits (bounded batches in flight, each retried in
place until the client takes it), so generation pauses instead of buffering, the debt
shows in ``behind_schedule_seconds``, and the pacer catches up once the broker is back.
Nothing generated is dropped.

On a stop request it stops generating, waits for what is in flight until
``shutdown_timeout`` after the request (also when the broker is gone and a send is
stuck waiting), logs the final summary and returns 0, or 1 if events were left
unacknowledged: the final line then says which (per sensor, ``_unacknowledged.py``). A
batch that fails for good (``DeliveryFailedError``) stops generating at once; after
the same drain and final line the error is raised, so the process exits 1 with one
line naming it.
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from sensorstream.runtime import (
    EXIT_FATAL,
    KafkaUnavailableError,
    ObservabilityServer,
    RetriesExhaustedError,
    StopSignal,
    configure_logging,
    connect_admin,
    ensure_topics,
    instrument_retries,
    kafka_errors,
    retry,
    startup_policy,
    tracing,
    until_stopped,
)
from sensorstream.schema import TOPOLOGY

from ._client import create_producer
from ._metrics import RETRY_START_PRODUCER, ProducerMetrics
from ._pacing import (
    BurstProfile,
    ConstantProfile,
    PoissonProfile,
    RatePacer,
    RateProfile,
    SineProfile,
    TickGrid,
)
from ._resume import ResumedSeqs, resume_seqs
from ._sender import BatchSender, lane_capacity
from ._simulation import SensorFleet
from ._unacknowledged import UnacknowledgedReadings
from .settings import ProducerSettings

__all__ = ["EXIT_OK", "ProducerService", "build_profile", "package_version", "run"]

EXIT_OK = 0
TICK_SECONDS = 0.005
"""How often the loop wakes to emit what is due."""
MAX_TICK_LAG_SECONDS = 1.0
"""After a pause, missed ticks are replayed (keeping their times) up to this far back."""
MAX_EVENTS_PER_TICK = 10_000
"""Cap per tick so a big backlog is worked off in steps, each yielding to the loop."""
MAX_RATE_BATCH = 5_000
"""Events generated per step with ``--rate max``."""

log = structlog.get_logger("sensorstream.producer")


def package_version() -> str:
    try:
        return version("sensorstream-producer")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0.0.0"


def build_profile(settings: ProducerSettings, rate: float) -> RateProfile:
    """The rate profile the settings describe, around ``rate`` events per second."""
    if settings.rate_profile == "poisson":
        return PoissonProfile(rate, seed=settings.seed)
    if settings.rate_profile == "sine":
        return SineProfile(rate, period=settings.sine_period, amplitude=settings.sine_amplitude)
    if settings.rate_profile == "burst":
        return BurstProfile(
            rate,
            every=settings.burst_every,
            multiplier=settings.burst_multiplier,
            duration=settings.burst_duration,
        )
    return ConstantProfile(rate)


class ProducerService:
    """One run of the producer; :meth:`run` returns the exit status."""

    def __init__(
        self,
        settings: ProducerSettings,
        stop: StopSignal,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.registry = registry
        self.metrics = ProducerMetrics(registry, version=package_version())
        self.fleet = SensorFleet(
            settings.sensors, seed=settings.seed, anomaly_probability=settings.anomaly_probability
        )
        rate = settings.rate_per_second
        self.pacer: RatePacer | None = None
        self.grid: TickGrid | None = None
        if rate is not None:
            self.pacer = RatePacer(
                build_profile(settings, rate),
                clock=time.monotonic,
                count=settings.count,
                duration=settings.duration,
            )
        self.sender: BatchSender | None = None
        self.server: ObservabilityServer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._topic_created = False
        self._stopping = False
        self._failures_logged = 0

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while the producer is started, not stopping, and acks keep coming."""
        sender = self.sender
        if sender is None or self._stopping:
            return False, {"reason": "stopping" if self._stopping else "starting"}
        counts = sender.counts
        details = {"sent": counts.sent, "acked": counts.acked, "in_flight": counts.in_flight}
        if counts.in_flight == 0:
            return True, details
        rate = self.settings.rate_per_second
        window = max(10.0, 3.0 / rate) if rate else 10.0
        last = sender.last_ack_at
        since = time.monotonic() - (last if last is not None else self._started_at)
        if since <= window:
            return True, details
        return False, {**details, "reason": f"no acknowledgement for {since:.1f}s"}

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        settings = self.settings
        instrument_retries(self.metrics.retries)
        self.server = ObservabilityServer.from_settings(
            settings, readiness=self.readiness, registry=self.registry
        )
        await self.server.start()
        log.info(
            "producer_starting",
            metrics_port=self.server.bound_port,
            settings=settings.public_dict(),
        )
        self._started_at = time.monotonic()
        try:
            partitions = await until_stopped(self.stop, self._prepare_topic())
            if partitions is None:
                return EXIT_OK
            if settings.resume_seq:
                await self._resume_seqs(partitions)
            if self.stop.is_set():
                return EXIT_OK
            self._producer = await self._start_producer()
            self.sender = BatchSender(
                self._producer,
                settings.topic,
                partitions=partitions,
                max_in_flight_batches=settings.max_in_flight_batches,
                metrics=self.metrics,
                on_failure=self._batch_failed,
                lane_capacity=lane_capacity(settings.rate_per_second, partitions),
            )
            self.metrics.up.set(1)
            return await self._produce_and_drain()
        finally:
            self.metrics.up.set(0)
            await self.server.stop()

    async def _prepare_topic(self) -> int:
        """Create the input topic from the declared topology (or check the existing one)."""
        settings = self.settings
        spec = TOPOLOGY.configured(
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            names={"input": settings.topic},
        ).input
        admin = await connect_admin(settings)
        try:
            [state] = await ensure_topics(
                admin,
                [spec],
                bootstrap=settings.bootstrap_servers,
                policy=startup_policy(settings),
            )
        finally:
            await admin.close()
        self._topic_created = state.created
        return state.partitions

    async def _resume_seqs(self, partitions: int) -> None:
        """Continue each sensor's seq after the highest one in the topic (``_resume.py``).

        A topic this run has just created is not read: nothing can be in it.
        """
        started = time.monotonic()
        fleet = self.fleet
        if self._topic_created:
            resumed = ResumedSeqs(next_seqs=[0] * fleet.sensors)
        else:
            resumed = await resume_seqs(self.settings, fleet.keys, partitions, stop=self.stop)
        if not resumed.complete:
            return  # stopping: nothing will be generated
        if resumed.sensors_resumed:
            fleet.resume(resumed.next_seqs)
        log.info(
            "seqs_resumed",
            sensors=resumed.sensors_resumed,
            of_sensors=fleet.sensors,
            highest_seq=resumed.highest_seq,
            records_read=resumed.records_read,
            undecodable=resumed.undecodable,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _start_producer(self) -> AIOKafkaProducer:
        """Start the Kafka producer, retrying an unreachable broker for ``startup_timeout``."""
        settings = self.settings

        async def start() -> AIOKafkaProducer:
            producer = create_producer(settings)
            try:
                with kafka_errors(f"starting the Kafka producer at {settings.bootstrap_servers}"):
                    await producer.start()
            except BaseException:
                await producer.stop()
                raise
            return producer

        try:
            producer = await retry(RETRY_START_PRODUCER, start, policy=startup_policy(settings))
        except RetriesExhaustedError as exc:
            raise KafkaUnavailableError(
                f"cannot start the Kafka producer at {settings.bootstrap_servers} within "
                f"{settings.startup_timeout:g} s (last error: {exc.__cause__}); check the broker "
                "and --bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS, or raise "
                "SENSORSTREAM_STARTUP_TIMEOUT"
            ) from exc
        log.info("producer_started", topic=settings.topic)
        return producer

    async def _produce_and_drain(self) -> int:
        sender = self.sender
        assert sender is not None
        reporter = asyncio.create_task(self._report())
        producing = asyncio.create_task(
            self._produce_max() if self.pacer is None else self._produce_paced(self.pacer)
        )
        stopped = asyncio.create_task(self.stop.wait())
        failed = asyncio.create_task(sender.failed.wait())
        try:
            await asyncio.wait({producing, stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            # One deadline for the whole shutdown, from the stop request (or the end of a
            # bounded run, or a failed delivery). The loop sees the stop at its next tick,
            # unless a send is waiting for a broker that stays away: then it is cancelled
            # at the deadline and what it held counts as unacknowledged.
            deadline = time.monotonic() + self.settings.shutdown_timeout
            if not producing.done() and not failed.done():
                await asyncio.wait(
                    {producing, failed},
                    timeout=self.settings.shutdown_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            if not producing.done():
                # After a failed delivery nothing more can be delivered in order: stop now.
                reason = "a batch could not be delivered"
                if not failed.done():
                    reason = "still waiting for the broker at the shutdown deadline"
                producing.cancel()
                await asyncio.wait({producing})
                log.warning("producing_cancelled", reason=reason)
            if not producing.cancelled():
                error = producing.exception()
                if error is not None and error is not sender.failure:
                    raise error  # what ended the loop, if anything but a failed delivery did
        finally:
            self._stopping = True
            for task in (reporter, stopped, failed, producing):
                task.cancel()
        return await self._drain(deadline)

    async def _produce_paced(self, pacer: RatePacer) -> None:
        # One task, one loop: wake every tick, emit what is due in one batch.
        fleet = self.fleet
        sender = self.sender
        assert sender is not None
        stop = self.stop
        monotonic = time.monotonic
        # Event times are the schedule's ticks on the wall clock: the wall time at the
        # start plus monotonic offsets (a clock step never reorders them).
        pacer.start()
        wall_start_ms = time.time_ns() / 1_000_000
        grid = TickGrid(pacer.started_at, interval=TICK_SECONDS, max_lag=MAX_TICK_LAG_SECONDS)
        self.grid = grid
        while not stop.is_set() and not pacer.finished:
            tick = grid.take(monotonic())
            due = pacer.due(tick, limit=MAX_EVENTS_PER_TICK, before=True)
            if due:
                # Due in [tick - TICK, tick): stamped with the start of that interval.
                event_ms = round(wall_start_ms + (tick - TICK_SECONDS - grid.start) * 1000)
                await sender.send(fleet.generate(due, event_ms), event_ms)
            delay = grid.next_at - monotonic()
            if delay > 0:
                await self._sleep_or_stop(delay)
            else:
                await asyncio.sleep(0)

    async def _produce_max(self) -> None:
        settings = self.settings
        fleet = self.fleet
        sender = self.sender
        assert sender is not None
        stop = self.stop
        wall_ms = time.time_ns
        end = None if settings.duration is None else time.monotonic() + settings.duration
        remaining = settings.count
        while not stop.is_set():
            step = MAX_RATE_BATCH if remaining is None else min(MAX_RATE_BATCH, remaining)
            if step <= 0 or (end is not None and time.monotonic() >= end):
                break
            now_ms = wall_ms() // 1_000_000
            await sender.send(fleet.generate(step, now_ms), now_ms)
            if remaining is not None:
                remaining -= step
            await asyncio.sleep(0)

    async def _sleep_or_stop(self, delay: float) -> None:
        # A plain sleep: waking on the stop event would cost a task per tick.
        await asyncio.sleep(delay)

    async def _drain(self, deadline: float) -> int:
        sender = self.sender
        assert sender is not None
        assert self._producer is not None
        timeout = self.settings.shutdown_timeout
        log.info(
            "producer_draining",
            in_flight=sender.counts.in_flight,
            timeout=round(max(0.0, deadline - time.monotonic()), 3),
        )
        flushed = await sender.flush(max(0.0, deadline - time.monotonic()))
        await sender.close()
        remaining = max(0.1, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._producer.stop(), remaining)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("producer_close_failed", error=str(exc) or type(exc).__name__)
        counts = sender.counts
        self.metrics.events_in_flight.set(counts.in_flight)
        summary = {
            "sent": counts.sent,
            "acked": counts.acked,
            "failed": counts.failed,
            "unacknowledged": counts.sent - counts.acked,
            "in_flight": counts.in_flight,
            "failed_by_kind": dict(counts.failed_by_kind),
            "seconds": round(time.monotonic() - self._started_at, 3),
        }
        failure = sender.failure
        if failure is None and counts.sent == counts.acked:
            log.info("producer_stopped", **summary)
            return EXIT_OK
        lost = UnacknowledgedReadings.of(sender.unacknowledged())
        where = "in flight" if flushed else f"in flight at the {timeout:g}s shutdown deadline"
        log.error(
            "producer_stopped_with_losses",
            **summary,
            **lost.log_fields(),
            **({} if failure is None else {"error": str(failure)}),
            message=f"{counts.sent - counts.acked} events were not acknowledged "
            f"({counts.in_flight} still {where}, {counts.failed} failed), {lost.describe()}",
        )
        if failure is not None:
            raise failure
        return EXIT_FATAL

    # ------------------------------------------------------------------ reporting

    def _batch_failed(self, exc: BaseException, events: int) -> None:
        # Log the first few failures in full; the summary line carries the counts after that.
        self._failures_logged += 1
        if self._failures_logged <= 5:
            log.error(
                "batch_failed",
                events=events,
                error=str(exc) or type(exc).__name__,
                kind=type(exc).__name__,
            )

    async def _report(self) -> None:
        sender = self.sender
        pacer = self.pacer
        assert sender is not None
        metrics = self.metrics
        interval = self.settings.summary_interval
        last_acked = 0
        last_at = time.monotonic()
        summary_acked = 0
        summary_failed = 0
        summary_at = last_at
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            counts = sender.counts
            metrics.achieved_rate.set((counts.acked - last_acked) / (now - last_at))
            last_acked, last_at = counts.acked, now
            behind = 0.0
            if pacer is not None:
                behind = pacer.behind_seconds(now)
                if self.grid is not None:
                    behind = max(behind, self.grid.behind(now))
                metrics.target_rate.set(pacer.profile.rate_at(pacer.elapsed(now)))
            metrics.behind_schedule.set(behind)
            metrics.events_in_flight.set(counts.in_flight)
            if now - summary_at >= interval:
                p99 = sender.latency.take_p99()
                log.info(
                    "producer_summary",
                    rate=round((counts.acked - summary_acked) / (now - summary_at), 1),
                    sent=counts.sent,
                    acked=counts.acked,
                    failed=counts.failed,
                    errors=counts.failed - summary_failed,
                    in_flight=counts.in_flight,
                    behind_schedule_s=round(behind, 3),
                    p99_latency_ms=None if p99 is None else round(p99 * 1000, 1),
                )
                if behind > 1.0:
                    log.warning(
                        "producer_behind_schedule",
                        behind_schedule_s=round(behind, 3),
                        hint="the machine or broker cannot carry --rate; lower it or add "
                        "partitions/instances",
                    )
                summary_acked, summary_failed, summary_at = counts.acked, counts.failed, now


async def run(
    settings: ProducerSettings, stop: StopSignal, *, registry: CollectorRegistry = REGISTRY
) -> int:
    """Configure logging and tracing, run one producer until done or stopped; return the
    exit status."""
    configure_logging(
        service=settings.service_name,
        version=package_version(),
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
        secrets=settings.secret_values(),
    )
    # Off unless OTEL_TRACES_EXPORTER asks for it (docs/tracing.md).
    tracing.configure_tracing(
        settings.service_name, version=package_version(), instance=settings.instance_id
    )
    return await ProducerService(settings, stop, registry=registry).run()
