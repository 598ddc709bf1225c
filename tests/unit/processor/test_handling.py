"""Specification of the handler contract: order, retries with backoff, dead letters."""

from __future__ import annotations

from typing import Any

from consumed_records import Record
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sensorstream.processor._dead_letters import DeadLetterWriter
from sensorstream.processor._handling import HandlerRunner
from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.processor.handler import HandlerContext
from sensorstream.schema import (
    DeadLetterHeaders,
    PoisonEventError,
    Rejection,
    RejectReason,
    SensorReading,
    parse_reading,
)
from sensorstream.schema.testing import valid_payload


class Handler:
    def __init__(self, failures: int = 0, poison: bool = False) -> None:
        self.calls: list[int] = []
        self.failures = failures
        self.poison = poison

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        self.calls.append(context.offset)
        if self.poison:
            raise PoisonEventError(Rejection(RejectReason.OUT_OF_RANGE, "never"))
        if self.failures:
            self.failures -= 1
            raise RuntimeError("flaky")


def valid(*offsets: int) -> list[tuple[Any, SensorReading]]:
    pairs = []
    for offset in offsets:
        value = valid_payload(seq=offset)
        pairs.append((Record("sensor-data", 0, offset, 1, b"k", value), parse_reading(value)))
    return pairs


def runner(handler: Handler, *, retries: int = 3) -> tuple[HandlerRunner, ProcessorMetrics]:
    metrics = ProcessorMetrics(CollectorRegistry())
    return (
        HandlerRunner(
            handler,  # type: ignore[arg-type]
            retries=retries,
            backoff=0.0,
            instance="i",
            dead_letters=DeadLetterWriter(topic="dlq", instance="i", max_bytes=1 << 20),
            duration=metrics.handler_duration,
            retried=metrics.retried,
        ),
        metrics,
    )


class TestHandlerRunner:
    async def test_calls_once_per_event_in_order(self) -> None:
        """Every valid event is handled once, in offset order; nothing is dead-lettered."""
        handler = Handler()
        run, _ = runner(handler)

        outcome = await run.run(valid(3, 4, 5))

        assert ([3, 4, 5], []) == (handler.calls, outcome.dead_letters)

    async def test_a_failure_is_retried_then_succeeds(self) -> None:
        """An exception is retried (counted and logged); a later success ends it."""
        handler = Handler(failures=2)
        run, metrics = runner(handler)

        with capture_logs() as logs:
            outcome = await run.run(valid(0))

        assert ([0, 0, 0], [], 2.0) == (
            handler.calls,
            outcome.dead_letters,
            metrics.retried._value.get(),
        )
        assert ["handler_failed", "handler_failed"] == [e["event"] for e in logs]

    async def test_exhausted_retries_dead_letter_the_event(self) -> None:
        """Past its retries the event is dead-lettered (handler_failed); the next one runs."""
        handler = Handler(failures=10)
        run, _ = runner(handler, retries=2)

        outcome = await run.run(valid(0, 1))

        reasons = [
            DeadLetterHeaders.from_kafka_headers(o.headers).reason.value
            for o in outcome.dead_letters
        ]
        assert ([0, 0, 0, 1, 1, 1], ["handler_failed"] * 2) == (handler.calls, reasons)

    async def test_poison_error_dead_letters_without_retry(self) -> None:
        """PoisonEventError from the handler goes to the DLQ at once."""
        handler = Handler(poison=True)
        run, _ = runner(handler, retries=5)

        outcome = await run.run(valid(0))

        assert ([0], 1) == (handler.calls, len(outcome.dead_letters))
