"""Specification of retrying RetriableError with stamina (sensorstream.runtime.retry)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks
from structlog.testing import capture_logs

from sensorstream.runtime.retry import RetryPolicy, instrument_retries, retry
from sensorstream.schema import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    PoisonEventError,
    Rejection,
    RejectReason,
    RetriableError,
    RetriesExhaustedError,
)

# Waits of 10 ms without jitter keep every test fast and its retry count predictable.
FAST = RetryPolicy(budget=5.0, wait_initial=0.01, wait_max=0.01, wait_jitter=0.0)
SHORT = RetryPolicy(budget=0.05, wait_initial=0.01, wait_max=0.01, wait_jitter=0.0)


@pytest.fixture(autouse=True)
def quiet_retry_hooks() -> Iterator[None]:
    """Each test starts without stamina hooks (instrument_retries sets its own), and the
    previous global hooks are put back afterwards."""
    hooks = get_on_retry_hooks()
    set_on_retry_hooks([])
    yield
    set_on_retry_hooks(hooks)


class Flaky:
    """An operation that raises ``failures`` in turn, then returns ``value``."""

    def __init__(self, *failures: Exception, value: object = "done") -> None:
        self.failures = list(failures)
        self.value = value
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.value


class AlwaysFailing:
    """An operation that raises a new RetriableError on every call, and keeps them."""

    def __init__(self) -> None:
        self.raised: list[RetriableError] = []

    async def __call__(self) -> object:
        error = RetriableError(f"broker away (attempt {len(self.raised) + 1})")
        self.raised.append(error)
        raise error


class TestRetryPolicy:
    def test_defaults(self) -> None:
        """Waits start at 0.25 s, double up to 5 s, with up to 0.5 s of jitter."""
        policy = RetryPolicy(budget=30)

        assert (30, 0.25, 5.0, 0.5) == (
            policy.budget,
            policy.wait_initial,
            policy.wait_max,
            policy.wait_jitter,
        )

    def test_an_infinite_budget_is_allowed(self) -> None:
        """budget=math.inf retries until success or cancellation."""
        assert math.inf == RetryPolicy(budget=math.inf).budget

    @pytest.mark.parametrize("budget", [0, -1, math.nan])
    def test_refuses_a_budget_that_is_not_positive(self, budget: float) -> None:
        """A budget must be > 0 seconds; the error quotes the value."""
        with pytest.raises(ValueError, match=rf"retry budget must be > 0 seconds, got {budget!r}"):
            RetryPolicy(budget=budget)

    @pytest.mark.parametrize(
        ("wait_initial", "wait_max"), [(0, 1.0), (-0.1, 1.0), (2.0, 1.0)], ids=str
    )
    def test_refuses_waits_out_of_order(self, wait_initial: float, wait_max: float) -> None:
        """Need 0 < wait_initial <= wait_max; the error quotes both."""
        with pytest.raises(
            ValueError,
            match=rf"need 0 < wait_initial <= wait_max, got {wait_initial!r} and {wait_max!r}",
        ):
            RetryPolicy(budget=1, wait_initial=wait_initial, wait_max=wait_max)

    def test_refuses_negative_jitter(self) -> None:
        """Jitter is >= 0; the error quotes the value."""
        with pytest.raises(ValueError, match=r"wait_jitter must be >= 0, got -0\.5"):
            RetryPolicy(budget=1, wait_jitter=-0.5)

    def test_is_a_frozen_value(self) -> None:
        """A policy cannot be changed once made (it is shared between call sites)."""
        with pytest.raises(AttributeError):
            FAST.budget = 1  # type: ignore[misc]


class TestRetry:
    async def test_returns_the_value(self) -> None:
        """A call that succeeds at once is awaited once and its value returned."""
        call = Flaky(value=42)

        assert (42, 1) == (await retry("commit", call, policy=FAST), call.calls)

    async def test_retries_a_retriable_error_until_it_succeeds(self) -> None:
        """Two RetriableErrors, then success: three calls, the value returned."""
        call = Flaky(RetriableError("leader moving"), RetriableError("timed out"), value="ok")

        assert ("ok", 3) == (await retry("outputs", call, policy=FAST), call.calls)

    async def test_an_infinite_budget_retries_until_success(self) -> None:
        """With budget=math.inf there is no deadline, only success."""
        call = Flaky(*(RetriableError("still away") for _ in range(5)), value="back")
        forever = RetryPolicy(budget=math.inf, wait_initial=0.001, wait_max=0.001, wait_jitter=0)

        assert ("back", 6) == (await retry("connect", call, policy=forever), call.calls)

    @pytest.mark.parametrize(
        "error",
        [
            FatalError("auth failed"),
            ConfigError("bad setting"),
            OwnershipLostError("partition 3 moved"),
            PoisonEventError(Rejection(RejectReason.NOT_JSON, "value: not JSON")),
            ValueError("a bug"),
        ],
        ids=lambda error: type(error).__name__,
    )
    async def test_anything_else_propagates_at_once(self, error: Exception) -> None:
        """Only RetriableError is retried: any other exception is raised after one call."""
        call = Flaky(error)

        with pytest.raises(type(error)) as raised:
            await retry("commit", call, policy=FAST)

        assert (error, 1) == (raised.value, call.calls)

    async def test_raises_retries_exhausted_once_the_budget_is_spent(self) -> None:
        """Past the budget: RetriesExhaustedError from the last RetriableError, after retries."""
        call = AlwaysFailing()

        with pytest.raises(RetriesExhaustedError) as raised:
            await retry("commit", call, policy=SHORT)

        assert (True, call.raised[-1]) == (len(call.raised) > 1, raised.value.__cause__)

    async def test_exhausted_message_names_operation_budget_and_last_error(self) -> None:
        """'<operation>: still failing after <budget> s of retries (<last error>)'."""
        call = AlwaysFailing()

        with pytest.raises(RetriesExhaustedError) as raised:
            await retry("commit", call, policy=SHORT)

        assert f"commit: still failing after 0.05 s of retries ({call.raised[-1]})" == str(
            raised.value
        )

    async def test_exhausted_retries_are_fatal(self) -> None:
        """RetriesExhaustedError is a FatalError: the service exits with its one line."""
        with pytest.raises(FatalError):
            await retry("commit", AlwaysFailing(), policy=SHORT)

    async def test_keeps_within_the_budget(self) -> None:
        """With 10 ms waits, 50 ms of budget allows only a handful of attempts."""
        call = AlwaysFailing()

        with pytest.raises(RetriesExhaustedError):
            await retry("commit", call, policy=SHORT)

        assert 2 <= len(call.raised) <= 7


def fresh_counter() -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    counter = Counter(
        "sensorstream_test_retries_total", "Retries.", ["operation"], registry=registry
    )
    return counter, registry


def retries_counted(registry: CollectorRegistry, operation: str) -> float | None:
    return registry.get_sample_value("sensorstream_test_retries_total", {"operation": operation})


class TestInstrumentRetries:
    async def test_logs_each_scheduled_retry(self) -> None:
        """Each retry logs retry_scheduled (a warning) with operation, retry number and error."""
        instrument_retries(None)
        call = Flaky(RetriableError("leader moving"), RetriableError("timed out"))

        with capture_logs() as logs:
            await retry("outputs", call, policy=FAST)

        assert [
            ("retry_scheduled", "warning", "outputs", 1, "leader moving"),
            ("retry_scheduled", "warning", "outputs", 2, "timed out"),
        ] == [
            (e["event"], e["log_level"], e["operation"], e["retry"], e["error"])
            for e in logs
            if e["event"] == "retry_scheduled"
        ]

    async def test_logs_how_long_it_waits_and_has_waited(self) -> None:
        """retry_in and retried_for are seconds, rounded to 10 ms."""
        instrument_retries(None)

        with capture_logs() as logs:
            await retry("outputs", Flaky(RetriableError("x")), policy=FAST)

        assert [(0.01, 0.0)] == [(e["retry_in"], e["retried_for"]) for e in logs]

    async def test_an_error_without_text_is_logged_by_its_class(self) -> None:
        """A RetriableError with no message shows as 'RetriableError', not ''."""
        instrument_retries(None)

        with capture_logs() as logs:
            await retry("outputs", Flaky(RetriableError()), policy=FAST)

        assert ["RetriableError"] == [e["error"] for e in logs]

    async def test_counts_each_retry_by_operation(self) -> None:
        """The counter goes up once per retry, labelled with the retried operation."""
        counter, registry = fresh_counter()
        instrument_retries(counter)

        with capture_logs():
            await retry("outputs", Flaky(RetriableError("a"), RetriableError("b")), policy=FAST)
            await retry("commit", Flaky(RetriableError("c")), policy=FAST)

        assert (2.0, 1.0) == (
            retries_counted(registry, "outputs"),
            retries_counted(registry, "commit"),
        )

    async def test_a_first_time_success_counts_nothing(self) -> None:
        """No retry, no log line, no sample."""
        counter, registry = fresh_counter()
        instrument_retries(counter)

        with capture_logs() as logs:
            await retry("commit", Flaky(), policy=FAST)

        assert ([], None) == (logs, retries_counted(registry, "commit"))

    async def test_an_exhausted_operation_counts_every_retry_it_made(self) -> None:
        """Every attempt but the first was a scheduled retry, and each is counted."""
        counter, registry = fresh_counter()
        instrument_retries(counter)
        call = AlwaysFailing()

        with capture_logs(), pytest.raises(RetriesExhaustedError):
            await retry("connect", call, policy=SHORT)

        assert len(call.raised) - 1 == retries_counted(registry, "connect")

    async def test_a_nested_retry_is_labelled_with_its_own_operation(self) -> None:
        """A retry inside another operation counts under the inner name, the outer's under its."""
        counter, registry = fresh_counter()
        instrument_retries(counter)
        inner = Flaky(RetriableError("inner"))
        outer_calls: list[int] = []

        async def outer() -> object:
            outer_calls.append(1)
            await retry("describe topics", inner, policy=FAST)
            if len(outer_calls) == 1:
                raise RetriableError("outer")
            return "ok"

        with capture_logs():
            await retry("create topics", outer, policy=FAST)

        assert (1.0, 1.0) == (
            retries_counted(registry, "describe topics"),
            retries_counted(registry, "create topics"),
        )
