"""Specification of how a service process starts and stops (sensorstream.runtime.lifecycle)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from sensorstream.runtime import EXIT_BAD_SETTING, EXIT_FATAL, StopSignal, run_service
from sensorstream.schema import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    RecordTooLargeError,
    RetriableError,
    RetriesExhaustedError,
)

Main = Callable[[StopSignal], Coroutine[Any, Any, int]]


@pytest.fixture(autouse=True)
def restored_signal_handlers() -> Iterator[None]:
    """uvloop leaves its (closed) loop's SIGINT/SIGTERM handlers behind: put pytest's back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def failing_with(*errors: BaseException) -> Main:
    """A service whose TaskGroup tasks raise ``errors`` while a sibling keeps running."""

    async def main(stop: StopSignal) -> int:
        async def fail(error: BaseException) -> None:
            raise error

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(asyncio.sleep(60))
            for error in errors:
                tasks.create_task(fail(error))
        return 0

    return main


def raising(error: BaseException) -> Main:
    """A service whose main coroutine raises ``error`` directly."""

    async def main(stop: StopSignal) -> int:
        raise error

    return main


def run(main: Main) -> tuple[int, list[dict[str, Any]]]:
    with capture_logs() as logs:
        code = run_service(main, prog="sensorstream-example")
    return code, logs


class TestExitStatus:
    def test_returns_what_main_returns(self) -> None:
        """A clean stop exits with main's own status."""

        async def main(stop: StopSignal) -> int:
            return 0

        assert 0 == run(main)[0]

    @pytest.mark.parametrize(
        "error",
        [
            FatalError("cannot reach Kafka at kafka:9092"),
            RetriesExhaustedError("commit: still failing after 30 s of retries"),
            RecordTooLargeError("producing 1 output failed: MessageSizeTooLargeError"),
        ],
        ids=lambda error: type(error).__name__,
    )
    def test_a_fatal_error_exits_1_with_one_line(
        self, error: FatalError, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Any FatalError: exit 1 and exactly 'prog: error: <message>' on stderr."""
        code, _ = run(raising(error))

        assert (EXIT_FATAL, f"sensorstream-example: error: {error}\n") == (
            code,
            capsys.readouterr().err,
        )

    def test_a_config_error_exits_2_with_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad setting: exit 2 and 'prog: error: <message>' on stderr."""
        code, _ = run(raising(ConfigError("SASL authentication failed: check SENSORSTREAM_SASL_*")))

        assert (
            EXIT_BAD_SETTING,
            "sensorstream-example: error: SASL authentication failed: check SENSORSTREAM_SASL_*\n",
        ) == (code, capsys.readouterr().err)

    def test_a_fatal_error_is_logged_as_service_failed(self) -> None:
        """Exit 1 also leaves a service_failed error event with the message."""
        _, logs = run(raising(FatalError("broker gone")))

        assert [("error", "broker gone")] == [
            (e["log_level"], e["error"]) for e in logs if e["event"] == "service_failed"
        ]

    @pytest.mark.parametrize(
        "error",
        [ValueError("a bug"), RetriableError("leader moving"), OwnershipLostError("moved")],
        ids=lambda error: type(error).__name__,
    )
    def test_anything_else_is_re_raised(self, error: Exception) -> None:
        """A bug or an unhandled non-fatal error keeps its traceback: it is not swallowed."""
        with pytest.raises(type(error)) as raised:
            run(raising(error))

        assert error is raised.value


class TestExceptionGroups:
    def test_a_fatal_error_from_a_task_group_exits_1_with_one_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A task's FatalError arrives in an ExceptionGroup: still exit 1 and one line."""
        code, _ = run(failing_with(RetriesExhaustedError("outputs: still failing after 30 s")))

        assert (EXIT_FATAL, ["sensorstream-example: error: outputs: still failing after 30 s"]) == (
            code,
            capsys.readouterr().err.splitlines(),
        )

    def test_a_config_error_from_a_task_group_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A task's ConfigError inside the group still means a bad setting: exit 2."""
        code, _ = run(failing_with(ConfigError("topic authorization failed")))

        assert (EXIT_BAD_SETTING, ["sensorstream-example: error: topic authorization failed"]) == (
            code,
            capsys.readouterr().err.splitlines(),
        )

    def test_a_fatal_error_in_a_nested_group_is_found(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A TaskGroup inside a task of a TaskGroup: the FatalError two levels down decides."""

        async def main(stop: StopSignal) -> int:
            async with asyncio.TaskGroup() as outer:
                outer.create_task(failing_with(FatalError("partition worker died"))(stop))
            return 0

        code, _ = run(main)

        assert (EXIT_FATAL, ["sensorstream-example: error: partition worker died"]) == (
            code,
            capsys.readouterr().err.splitlines(),
        )

    def test_a_group_of_one_fatal_among_others_exits_on_the_fatal(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Next to a non-fatal error, the FatalError still decides; one line only."""

        async def main(stop: StopSignal) -> int:
            raise ExceptionGroup(
                "tasks", [RetriableError("leader moving"), FatalError("auth failed")]
            )

        code, _ = run(main)

        assert (EXIT_FATAL, ["sensorstream-example: error: auth failed"]) == (
            code,
            capsys.readouterr().err.splitlines(),
        )

    def test_the_first_fatal_error_decides(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Two of our errors in one group: the first (depth first) sets status and line."""

        async def main(stop: StopSignal) -> int:
            raise ExceptionGroup(
                "tasks",
                [
                    ExceptionGroup("worker", [ConfigError("bad --group-id")]),
                    FatalError("shutdown did not finish in time"),
                ],
            )

        code, _ = run(main)

        assert (EXIT_BAD_SETTING, ["sensorstream-example: error: bad --group-id"]) == (
            code,
            capsys.readouterr().err.splitlines(),
        )

    def test_a_group_without_a_fatal_error_is_re_raised(self) -> None:
        """A group of bugs or non-fatal errors keeps its traceback."""
        with pytest.raises(ExceptionGroup) as raised:
            run(failing_with(ValueError("a bug"), RetriableError("leader moving")))

        assert [ValueError, RetriableError] == [type(e) for e in raised.value.exceptions]


class TestSignals:
    def test_the_first_sigterm_requests_a_stop(self) -> None:
        """SIGTERM sets the stop signal (named after it); main winds down and returns."""
        seen: list[str | None] = []

        async def main(stop: StopSignal) -> int:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), timeout=5)
            seen.append(stop.signal_name)
            return 0

        code, logs = run(main)

        assert (0, ["SIGTERM"], [("info", "SIGTERM")]) == (
            code,
            seen,
            [(e["log_level"], e["signal"]) for e in logs if e["event"] == "shutdown_requested"],
        )

    def test_a_second_signal_exits_at_once(self) -> None:
        """Another SIGTERM/SIGINT while draining skips the drain: exit 1, shutdown_forced."""

        async def main(stop: StopSignal) -> int:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), timeout=5)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(5)
            return 0

        with capture_logs() as logs, pytest.raises(SystemExit) as exited:
            run_service(main, prog="sensorstream-example")

        assert (EXIT_FATAL, ["SIGINT"]) == (
            exited.value.code,
            [e["signal"] for e in logs if e["event"] == "shutdown_forced"],
        )


class TestStopSignal:
    async def test_starts_unset(self) -> None:
        """A new stop signal is not set and names no signal."""
        stop = StopSignal()

        assert (False, None) == (stop.is_set(), stop.signal_name)

    async def test_request_sets_it_and_wakes_waiters(self) -> None:
        """request() sets it, records the reason and releases wait()."""
        stop = StopSignal()
        waiter = asyncio.create_task(stop.wait())

        stop.request("SIGTERM")
        await asyncio.wait_for(waiter, timeout=1)

        assert (True, "SIGTERM") == (stop.is_set(), stop.signal_name)

    async def test_the_first_reason_is_kept(self) -> None:
        """A later request does not overwrite why the service is stopping."""
        stop = StopSignal()

        stop.request("SIGTERM")
        stop.request("SIGINT")

        assert "SIGTERM" == stop.signal_name
