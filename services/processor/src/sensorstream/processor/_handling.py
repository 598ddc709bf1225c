"""Calling the user's handler for each valid reading of a chunk, with its retry contract.

The contract (stated for users in ``handler``): called once per valid event in offset
order, never concurrently for one partition; an exception is retried
``handler_retries`` times with a delay of ``handler_backoff`` seconds doubling per
retry, then the event is dead-lettered (``handler_failed``); ``PoisonEventError``
dead-letters it at once. The runner returns those dead letters instead of adding them
to the pipeline's result: the worker sends both.

Not stamina: the user's handler is not a Kafka call and its policy is a fixed, documented
count and doubling delay, without jitter or a time budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from sensorstream.schema import DeadLetterReason, PoisonEventError, SensorReading

from ._dead_letters import DeadLetterWriter, OutputRecord
from .handler import Handler, HandlerContext

__all__ = ["HandlerOutcome", "HandlerRunner"]

log = structlog.get_logger("sensorstream.processor")


@dataclass(slots=True)
class HandlerOutcome:
    """What calling the handler for one chunk produced."""

    dead_letters: list[OutputRecord] = field(default_factory=list)
    truncated: int = 0
    """Dead letters cut to fit the DLQ."""


class HandlerRunner:
    """Runs one partition's handler calls; owned by that partition's worker."""

    def __init__(
        self,
        handler: Handler,
        *,
        retries: int,
        backoff: float,
        instance: str,
        dead_letters: DeadLetterWriter,
        duration: Histogram,
        retried: Counter,
    ) -> None:
        self._handler = handler
        self._retries = retries
        self._backoff = backoff
        self._instance = instance
        self._dead_letters = dead_letters
        self._observe = duration.observe
        self._retried = retried

    async def run(self, valid: Sequence[tuple[Any, SensorReading]]) -> HandlerOutcome:
        """Call the handler for each (record, reading) in order; see the module doc."""
        outcome = HandlerOutcome()
        handle = self._handler.handle
        observe = self._observe
        for record, reading in valid:
            context = HandlerContext(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=record.timestamp,
                key=record.key,
                headers=record.headers,
                instance=self._instance,
            )
            attempt = 0
            while True:
                started = time.perf_counter()
                try:
                    await handle(reading, context)
                except PoisonEventError as exc:
                    observe(time.perf_counter() - started)
                    self._give_up(record, reading, exc, attempt, outcome)
                    break
                except Exception as exc:
                    observe(time.perf_counter() - started)
                    if attempt >= self._retries:
                        self._give_up(record, reading, exc, attempt, outcome)
                        break
                    delay = self._backoff * (2**attempt)
                    attempt += 1
                    self._retried.inc()
                    log.warning(
                        "handler_failed",
                        partition=record.partition,
                        offset=record.offset,
                        attempt=attempt,
                        retry_in=round(delay, 3),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    await asyncio.sleep(delay)
                else:
                    observe(time.perf_counter() - started)
                    break
        return outcome

    def _give_up(
        self,
        record: Any,
        reading: SensorReading,
        exc: BaseException,
        attempts: int,
        outcome: HandlerOutcome,
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "event_dead_lettered",
            partition=record.partition,
            offset=record.offset,
            reason=DeadLetterReason.HANDLER_FAILED.value,
            sensor_id=reading.sensor_id,
            retries=attempts,
            error=error,
        )
        letter = self._dead_letters.letter(record, DeadLetterReason.HANDLER_FAILED, error)
        outcome.dead_letters.append(letter)
        if letter.truncated:
            outcome.truncated += 1
