"""One scenario's pipeline: fresh topics, the real producer and processors, the audit.

A scenario reads as its fault and nothing else::

    async with ChaosPipeline(cluster, logs, "b. rolling restart", "exactly_once") as run:
        await run.warm_up()
        ...inject the fault, heal it...
        run.healed()
        await run.wait_recovered()
        outcome = await run.finish()
    outcome.check()

``finish`` stops the producer cleanly (its acknowledged count is then final), waits
until the audit finds nothing missing (every window closed, every commit visible),
records the scenario's row (``chaos_results``) and returns what was wrong, which
``check`` asserts. The row is recorded before any assertion, so a failed scenario has
its row in the table too.

Time to recover is measured from :meth:`ChaosPipeline.healed` to the first moment the
group has committed every reading the input held when the fault was over, with the
producer back on schedule: both seen from outside the services (an admin client and
the producer's /metrics), so a partition that its owner silently stopped processing
shows as not recovered, however little it lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from chaos_cluster import ChaosCluster
from chaos_results import ScenarioRow, record
from chaos_services import ProcessorGroup, ProducerCounts, ProducerProcess
from processor_support import Topics

from kafka_helpers import consume_all, create_topic
from sensorstream.audit import AuditReport, AuditTopics, PipelineAudit
from sensorstream.schema import (
    TOPOLOGY,
    DeadLetterHeaders,
    SensorReading,
    TopicRole,
    decode_aggregate,
    decode_reading,
)

__all__ = ["ChaosPipeline", "Expected", "Outcome"]

RATE = 500
"""Events per second from the producer: modest, the machine also runs three brokers."""
SENSORS = 100
INPUT_PARTITIONS = 6
OUTPUT_PARTITIONS = 3
REPLICATION_FACTOR = 3
BEHIND_OK_SECONDS = 1.0
WARM_UP_WITHIN = 90.0
RECOVER_WITHIN = 60.0
SETTLE_WITHIN = 60.0
POLL_SECONDS = 0.5
WINDOW_MEMORY = 300
"""Windows per sensor the audit remembers to recognise an identical re-emission: an
at-least-once replay after a stalled commit re-emits tens of seconds of 1 s windows
(the audit's default of 8 would count those readings as duplicated)."""
CLIENT_TIMEOUT = 10.0
FORENSIC_SENSORS = 5
"""On a failure, the records of this many problem sensors go to ``forensics.json``."""


@dataclass(frozen=True)
class Expected:
    """What a scenario puts into the input topic besides the fleet's readings."""

    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters it must cause, by reason (none for a plain fault)."""
    foreign_readings: int = 0
    """Valid readings with a seq of sensors not in the producer's fleet."""


@dataclass
class Outcome:
    """The scenario's row and everything that was wrong."""

    row: ScenarioRow
    failures: list[str]
    report: AuditReport | None

    def check(self) -> None:
        if not self.failures:
            return
        details = ""
        if self.report is not None:
            details = json.dumps(self.report.as_dict()["sensors"][:5], indent=1, default=str)
        raise AssertionError(
            f"{self.row.scenario} ({self.row.guarantee}): "
            + "; ".join(self.failures)
            + f"\naudit totals: {self.report.totals if self.report else None}"
            + f"\nfirst sensors with a problem: {details}"
        )


async def create_topics(bootstrap: str, topics: Topics) -> None:
    """The four topics as the topology declares them, three replicas (min ISR 2)."""
    names: dict[TopicRole, str] = {
        "input": topics.input,
        "aggregates": topics.aggregates,
        "alerts": topics.alerts,
        "dlq": topics.dlq,
    }
    inputs = TOPOLOGY.configured(
        partitions=INPUT_PARTITIONS, replication_factor=REPLICATION_FACTOR, names=names
    )
    outputs = TOPOLOGY.configured(
        partitions=OUTPUT_PARTITIONS, replication_factor=REPLICATION_FACTOR, names=names
    )
    specs = [inputs.input, *outputs.outputs]
    for spec in specs:
        assert "2" == spec.creation_configs()["min.insync.replicas"], spec
    await asyncio.gather(
        *(
            create_topic(
                bootstrap,
                spec.name,
                spec.partitions,
                replication_factor=spec.replication_factor,
                config=spec.creation_configs(),
            )
            for spec in specs
        )
    )


class ChaosPipeline:
    """Topics, one producer and a processor group for one scenario (an async context)."""

    def __init__(
        self,
        cluster: ChaosCluster,
        log_dir: Path,
        scenario: str,
        guarantee: str,
        *,
        processors: int = 2,
        rate: int = RATE,
        sensors: int = SENSORS,
    ) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.scenario = scenario
        self.guarantee = guarantee
        self.rate = rate
        self.sensors = sensors
        self.initial_processors = processors
        self.topics = Topics.fresh("chaos")
        self.processors = ProcessorGroup(
            cluster.bootstrap,
            self.topics,
            log_dir,
            env={
                "SENSORSTREAM_GUARANTEE": guarantee,
                "SENSORSTREAM_REPLICATION_FACTOR": str(REPLICATION_FACTOR),
                "SENSORSTREAM_OUTPUT_PARTITIONS": str(OUTPUT_PARTITIONS),
            },
        )
        self.producer: ProducerProcess | None = None
        self.earlier_runs = ProducerCounts()
        """What producer runs killed by the scenario had acknowledged (scraped at the kill)."""
        self.failures: list[str] = []
        self.recover_s: float | None = None
        self._started = time.monotonic()
        self._healed_at: float | None = None
        self._settle_within = SETTLE_WITHIN

    def note(self, what: str) -> None:
        """A progress line with the seconds since the scenario began (pytest -s shows it)."""
        print(f"[{self.scenario} +{time.monotonic() - self._started:.1f}s] {what}", flush=True)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ChaosPipeline:
        await create_topics(self.cluster.bootstrap, self.topics)
        self.start_producer()
        await asyncio.gather(
            self.processors.start(self.initial_processors), self.live_producer.wait_acking()
        )
        self.note(f"{self.initial_processors} processors ready, producer acknowledged")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.producer is not None and self.producer.running:
            self.producer.kill()
        await self.processors.stop_all()
        await self._delete_topics()

    def start_producer(self) -> ProducerProcess:
        self.producer = ProducerProcess.start(
            self.cluster.bootstrap,
            self.topics.input,
            self.log_dir,
            "--rate", str(self.rate), "--sensors", str(self.sensors),
            "--partitions", str(INPUT_PARTITIONS),
            "--replication-factor", str(REPLICATION_FACTOR),
        )  # fmt: skip
        return self.producer

    @property
    def live_producer(self) -> ProducerProcess:
        assert self.producer is not None, "no producer started"
        return self.producer

    async def kill_producer(self) -> ProducerCounts:
        """``kill -9`` the producer; what it had acknowledged just before, from /metrics."""
        producer = self.live_producer
        counts = await producer.counts()
        producer.kill()
        self.earlier_runs += counts
        return counts

    async def _delete_topics(self) -> None:
        # Fewer partitions for the next scenario's health checks and replica fetchers.
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cluster.answering_bootstrap)
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await asyncio.wait_for(admin.start(), CLIENT_TIMEOUT)
            await asyncio.wait_for(
                admin.delete_topics(
                    [self.topics.input, self.topics.aggregates, self.topics.alerts, self.topics.dlq]
                ),
                CLIENT_TIMEOUT,
            )
        with contextlib.suppress(KafkaError, OSError):
            await admin.close()

    # ------------------------------------------------------------------ progress

    async def offsets(self) -> tuple[dict[int, int], dict[int, int]] | None:
        """Per input partition, its end offset and the group's committed offset (0 if
        none), asked of the answering nodes (None: the cluster did not say in time)."""
        bootstrap = self.cluster.answering_bootstrap
        tps = [TopicPartition(self.topics.input, p) for p in range(INPUT_PARTITIONS)]
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=5000
        )
        try:
            await asyncio.wait_for(asyncio.gather(admin.start(), consumer.start()), CLIENT_TIMEOUT)
            ends = await asyncio.wait_for(consumer.end_offsets(tps), CLIENT_TIMEOUT)
            committed = await asyncio.wait_for(
                admin.list_consumer_group_offsets(self.topics.group, partitions=tps),
                CLIENT_TIMEOUT,
            )
        except (KafkaError, OSError, TimeoutError):
            return None
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await consumer.stop()
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        done = {tp.partition: max(0, getattr(committed.get(tp), "offset", 0)) for tp in tps}
        return {tp.partition: ends[tp] for tp in tps}, done

    async def group_lag(self) -> int | None:
        """Input events the group has not committed yet (None: the cluster did not say)."""
        offsets = await self.offsets()
        if offsets is None:
            return None
        ends, committed = offsets
        return sum(ends[p] - committed[p] for p in ends)

    async def _input_ends(self, within: float) -> dict[int, int]:
        """The input's end offsets now, once every partition has some readings."""
        deadline = time.monotonic() + within
        while True:
            offsets = await self.offsets()
            if offsets is not None and all(offsets[0].values()):
                return offsets[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no readings on every input partition: {offsets}")
            await asyncio.sleep(POLL_SECONDS)

    async def _caught_up(self, target: dict[int, int]) -> bool:
        """The group has committed everything up to ``target`` and the producer runs on
        schedule."""
        producer = self.live_producer
        if not producer.running:
            return False
        try:
            behind = await producer.behind_schedule()
        except (OSError, ValueError):
            return False
        if behind > BEHIND_OK_SECONDS:
            return False
        offsets = await self.offsets()
        return offsets is not None and all(offsets[1][p] >= end for p, end in target.items())

    async def wait_caught_up(self, within: float) -> bool:
        """Wait until the group has processed and committed every reading the input held
        when this was called, with the producer back on schedule; whether that happened
        within ``within`` seconds. (A partition its owner does not process never gets
        there, however little traffic it has.)"""
        deadline = time.monotonic() + within
        target = await self._input_ends(within)
        while not await self._caught_up(target):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True

    async def warm_up(self) -> None:
        """Wait until readings flow end to end before the fault."""
        if not await self.wait_caught_up(WARM_UP_WITHIN):
            raise AssertionError(
                f"the pipeline did not get going in {WARM_UP_WITHIN:g} s "
                f"(lag {await self.group_lag()}): {self.live_producer.tail(1500)}"
            )
        self.note("warmed up")

    def healed(self) -> None:
        """The fault is over: the recovery clock starts."""
        self._healed_at = time.monotonic()
        self.note("healed")

    async def wait_recovered(self) -> None:
        """Wait until the pipeline has caught up since :meth:`healed`; note the time."""
        assert self._healed_at is not None, "call healed() first"
        left = self._healed_at + RECOVER_WITHIN - time.monotonic()
        if not await self.wait_caught_up(left):
            self.failures.append(
                f"not caught up {RECOVER_WITHIN:g} s after healing: "
                f"input ends and committed offsets {await self.offsets()}"
            )
            self._settle_within = 0.0  # a stuck pipeline will not settle: one audit pass
            return
        self.recover_s = round(time.monotonic() - self._healed_at, 1)
        self.note(f"caught up after {self.recover_s:g} s")

    # ------------------------------------------------------------------ the end

    async def settled_audit(self) -> AuditReport:
        """Audit passes until nothing is missing (or ``SETTLE_WITHIN``); the last report."""
        topics = AuditTopics(
            input=self.topics.input, aggregates=self.topics.aggregates, dlq=self.topics.dlq
        )
        deadline = time.monotonic() + self._settle_within
        options: dict[str, Any] = {"bootstrap_servers": self.cluster.bootstrap}
        async with PipelineAudit(
            topics, options, isolation_level="read_committed", window_memory=WINDOW_MEMORY
        ) as audit:
            while True:
                await audit.run_pass()
                report = audit.report()
                if report.totals.missing == 0 or time.monotonic() > deadline:
                    return report
                await asyncio.sleep(1.0)

    async def finish(self, expected: Expected | None = None) -> Outcome:
        """Stop the producer, wait for the audit to settle, record the row."""
        expected = expected or Expected()
        failures = self.failures
        producer = self.live_producer
        if not self.processors.running():
            failures.append("no processor running at the end")
        if producer.running:
            exit_code = await producer.stop()
            if exit_code != 0:
                failures.append(f"producer exited {exit_code}: {producer.tail(1000)}")
        else:
            failures.append(f"producer died (exit {producer.proc.returncode}): {producer.tail()}")
        final = producer.final_line()
        run = ProducerCounts(int(final["sent"]), int(final["acked"])) if final else ProducerCounts()
        counts = self.earlier_runs + run

        self.note("producer stopped")
        report = await self.settled_audit()
        self.note("audit settled")
        failures.extend(self.processors.crashed())
        failures.extend(self._judge(report, counts, expected))
        totals = report.totals
        fleet_in_topic = totals.produced + totals.input_duplicates - expected.foreign_readings
        lost = totals.missing + totals.input_gaps + max(0, counts.acked - fleet_in_topic)
        row = ScenarioRow(
            scenario=self.scenario,
            guarantee=self.guarantee,
            produced=counts.sent,
            acknowledged=counts.acked,
            processed=totals.aggregated + totals.dead_lettered,
            lost=lost,
            duplicated=totals.duplicated + totals.input_duplicates,
            reemitted=totals.reemitted_windows,
            reordered=totals.input_reordered,
            partial_windows=totals.partial_windows,
            dead_lettered=totals.dead_lettered,
            recover_s=self.recover_s,
            wall_s=round(time.monotonic() - self._started, 1),
            verdict="ok" if not failures else "FAIL: " + "; ".join(f[:80] for f in failures[:3]),
        )
        record(row)
        if failures:
            await self.write_forensics(report)
        return Outcome(row=row, failures=failures, report=report)

    async def write_forensics(self, report: AuditReport) -> None:
        """Every record of the first problem sensors, as stored, to ``forensics.json``
        beside the services' logs: the seq accounting behind a failure."""
        sensors = {s.sensor_id for s in report.sensors[:FORENSIC_SENSORS]}
        found: dict[str, dict[str, list[dict[str, Any]]]] = {
            sensor: {"input": [], "aggregates": [], "dead_letters": []} for sensor in sensors
        }
        bootstrap = self.cluster.bootstrap
        for r in await consume_all(bootstrap, self.topics.input, timeout=60):
            reading = decode_reading(r.value or b"")
            if isinstance(reading, SensorReading) and reading.sensor_id in sensors:
                found[reading.sensor_id]["input"].append(
                    {"at": f"{r.partition}/{r.offset}", "seq": reading.seq,
                     "event_time": reading.event_time}
                )  # fmt: skip
        outputs = await consume_all(
            bootstrap, self.topics.aggregates, isolation_level="read_committed", timeout=60
        )
        for r in outputs:
            agg = decode_aggregate(r.value)
            if agg.sensor_id in sensors:
                found[agg.sensor_id]["aggregates"].append(
                    {"at": f"{r.partition}/{r.offset}", "window_start": agg.window_start,
                     "count": agg.count, "seqs": [agg.first_seq, agg.last_seq],
                     "kafka_timestamp": r.timestamp}
                )  # fmt: skip
        dead = await consume_all(
            bootstrap, self.topics.dlq, isolation_level="read_committed", timeout=60
        )
        for r in dead:
            reading = decode_reading(r.value or b"")
            if isinstance(reading, SensorReading) and reading.sensor_id in sensors:
                meta = DeadLetterHeaders.from_kafka_headers(r.headers)
                found[reading.sensor_id]["dead_letters"].append(
                    {"seq": reading.seq, "reason": meta.reason.value,
                     "from": f"{meta.original_partition}/{meta.original_offset}",
                     "lateness_ms": meta.lateness_ms, "kafka_timestamp": r.timestamp}
                )  # fmt: skip
        path = self.log_dir / "forensics.json"
        path.write_text(json.dumps({"totals": str(report.totals), "sensors": found}, indent=1))
        self.note(f"records of {sorted(sensors)} written to {path}")

    def _judge(self, report: AuditReport, counts: ProducerCounts, expected: Expected) -> list[str]:
        """Everything the audit shows that must not be, in words."""
        t = report.totals
        wrong = []
        fleet_in_topic = t.produced + t.input_duplicates - expected.foreign_readings
        if fleet_in_topic < counts.acked:
            wrong.append(
                f"the input holds {fleet_in_topic} fleet readings, "
                f"the producer acknowledged {counts.acked}"
            )
        checks = {
            "readings in no aggregate and not dead-lettered": t.missing,
            "seqs missing from the input": t.input_gaps,
            "readings counted twice": t.duplicated,
            "readings stored twice in the input": t.input_duplicates,
            "readings stored out of order": t.input_reordered,
            "partial windows": t.partial_windows,
            "overcounted windows": t.overcounted_windows,
            "windows re-emitted with other contents": t.conflicting_windows,
        }
        if self.guarantee == "exactly_once":
            checks["windows emitted twice (read_committed)"] = t.reemitted_windows
            checks["readings dead-lettered twice (read_committed)"] = t.dead_lettered_twice
        wrong.extend(f"{count} {what}" for what, count in checks.items() if count)
        reasons = Counter(t.dead_letters_by_reason)
        if reasons != expected.dead_letters:
            wrong.append(
                f"dead letters by reason {dict(sorted(reasons.items()))}, "
                f"expected {dict(sorted(expected.dead_letters.items()))}"
            )
        if not report.ok:
            wrong.append("the audit is not ok")
        return wrong
