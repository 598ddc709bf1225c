"""Retrying :class:`~sensorstream.schema.RetriableError`: one policy, one call, instrumented.

Every place where a broker hiccup can arise (producing outputs, committing, admin
calls, start-up) awaits its operation through :func:`retry`, which hands it to
stamina: exponential backoff with jitter, retrying only ``RetriableError`` (the
client's exceptions are translated before they get here, ``sensorstream.runtime.errors``),
within a time budget. Everything else passes straight through. When the budget is
spent, :class:`~sensorstream.schema.RetriesExhaustedError` (a ``FatalError``) names the
operation and the last error, and the service exits with that one line.

Each scheduled retry is logged (``retry_scheduled``, a warning) and counted in the
service's ``sensorstream_<service>_retries_total{operation}`` counter, once
:func:`instrument_retries` has been called at start-up. ``operation`` is one of a few
names fixed in code ("outputs", "commit", ...), never data.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina
import structlog
from prometheus_client import Counter
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from sensorstream.schema import RetriableError, RetriesExhaustedError

__all__ = ["RetryPolicy", "instrument_retries", "retry"]

T = TypeVar("T")

log = structlog.get_logger("sensorstream.retry")

_operation: contextvars.ContextVar[str] = contextvars.ContextVar(
    "sensorstream_retry_operation", default="unknown"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long and how patiently to retry.

    ``budget`` is the time in seconds for all attempts together, measured from the first;
    ``math.inf`` retries until the operation succeeds or is cancelled. Waits between
    attempts start at ``wait_initial`` and double up to ``wait_max``, plus up to
    ``wait_jitter`` of random jitter so replicas do not retry in lockstep.
    """

    budget: float
    wait_initial: float = 0.25
    wait_max: float = 5.0
    wait_jitter: float = 0.5

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"retry budget must be > 0 seconds, got {self.budget!r}")
        if not 0 < self.wait_initial <= self.wait_max:
            raise ValueError(
                f"need 0 < wait_initial <= wait_max, got {self.wait_initial!r} and "
                f"{self.wait_max!r}"
            )
        if self.wait_jitter < 0:
            raise ValueError(f"wait_jitter must be >= 0, got {self.wait_jitter!r}")


async def retry(operation: str, call: Callable[[], Awaitable[T]], *, policy: RetryPolicy) -> T:
    """Await ``call()`` until it returns, retrying ``RetriableError`` within ``policy``.

    Any other exception propagates at once. When the budget is spent, raise
    :class:`RetriesExhaustedError` from the last ``RetriableError``.
    """
    token = _operation.set(operation)
    try:
        async for attempt in stamina.retry_context(
            on=RetriableError,
            attempts=None,
            timeout=None if math.isinf(policy.budget) else policy.budget,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_jitter,
        ):
            with attempt:
                return await call()
    except RetriableError as exc:
        raise RetriesExhaustedError(
            f"{operation}: still failing after {policy.budget:g} s of retries ({exc})"
        ) from exc
    finally:
        _operation.reset(token)
    raise AssertionError("unreachable: stamina returns or raises")  # pragma: no cover


def instrument_retries(counter: Counter | None) -> None:
    """Log every scheduled retry and count it in ``counter`` (labelled by ``operation``)."""

    def on_retry(details: RetryDetails) -> None:
        operation = _operation.get()
        if counter is not None:
            counter.labels(operation=operation).inc()
        log.warning(
            "retry_scheduled",
            operation=operation,
            retry=details.retry_num,
            retry_in=round(details.wait_for, 2),
            retried_for=round(details.waited_so_far, 2),
            error=str(details.caused_by) or type(details.caused_by).__name__,
        )

    set_on_retry_hooks([on_retry])
