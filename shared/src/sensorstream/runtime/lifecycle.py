"""How a service process starts and stops.

:func:`run_service` installs uvloop, turns the first SIGTERM/SIGINT into a stop
request (a second one exits at once), runs the service's main coroutine and maps
the outcome to an exit status:

- 0: stopped cleanly;
- 1: a fatal runtime error (broker unreachable, auth failure, retries exhausted, a
  shutdown that did not finish in time), one line on stderr;
- 2: a bad setting, one line on stderr naming it.

A service runs its tasks in an ``asyncio.TaskGroup``, so a failure arrives wrapped in
an exception group: the first of our errors in it decides the exit status. No
traceback reaches the user for an error the project knows about.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
import uvloop

from sensorstream.schema import ConfigError, FatalError

from .settings import EXIT_BAD_SETTING

__all__ = ["EXIT_FATAL", "StopSignal", "run_service", "until_stopped"]

T = TypeVar("T")

EXIT_FATAL = 1

log = structlog.get_logger("sensorstream.lifecycle")


class StopSignal:
    """Set by SIGTERM or SIGINT; the service's loops watch it and wind down."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal_name: str | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()

    def request(self, reason: str) -> None:
        if self.event.is_set():
            return
        self.signal_name = reason
        self.event.set()


async def until_stopped(stop: StopSignal, awaitable: Awaitable[T]) -> T | None:
    """``awaitable``'s result, or ``None`` once a stop is requested first (it is then
    cancelled). Start-up steps that retry for ``--startup-timeout`` run under this, so a
    SIGTERM while the broker is away stops the service at once, not a minute later."""
    if stop.is_set():
        return None
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _install_signal_handlers(stop: StopSignal) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            # A second signal means "now": skip the graceful drain.
            log.warning("shutdown_forced", signal=sig.name)
            sys.stderr.flush()
            raise SystemExit(EXIT_FATAL)
        log.info("shutdown_requested", signal=sig.name)
        stop.request(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def run_service(main: Callable[[StopSignal], Coroutine[Any, Any, int]], *, prog: str) -> int:
    """Run ``main(stop)`` on uvloop and return the process exit status."""

    async def runner() -> int:
        stop = StopSignal()
        _install_signal_handlers(stop)
        return await main(stop)

    try:
        return uvloop.run(runner())
    except (FatalError, BaseExceptionGroup) as exc:
        fatal = _first_fatal(exc)
        if fatal is None:
            if isinstance(exc, BaseExceptionGroup):
                # A second signal's SystemExit (or Ctrl-C) that a task group wrapped.
                exit_, _ = exc.split(SystemExit)
                if exit_ is not None:
                    return EXIT_FATAL
                interrupted, _ = exc.split(KeyboardInterrupt)
                if interrupted is not None:
                    return EXIT_FATAL
            raise
        if isinstance(fatal, ConfigError):
            print(f"{prog}: error: {fatal}", file=sys.stderr)
            return EXIT_BAD_SETTING
        log.error("service_failed", error=str(fatal))
        print(f"{prog}: error: {fatal}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        return EXIT_FATAL
    finally:
        # uvloop leaves its closed loop's handlers installed; give the process its defaults.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _first_fatal(exc: BaseException) -> FatalError | None:
    """``exc`` itself, or the first FatalError inside a (nested) exception group."""
    if isinstance(exc, FatalError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_fatal(inner)
            if found is not None:
                return found
    return None
