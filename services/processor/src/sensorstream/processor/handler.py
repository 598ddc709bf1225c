"""The user's extension point: an async handler called for every valid reading.

Point the processor at a handler with ``--handler`` (``SENSORSTREAM_HANDLER``),
either as ``"package.module:attr"`` or as the name of an entry point in the group
``"sensorstream.handlers"``. ``attr`` may be a class (instantiated with no
arguments), a factory function returning a handler, or a bare ``async def
handle(reading, context)`` function. See ``sensorstream.processor.example_handler``.

The contract, which the processor keeps and the implementer may rely on:

* **When.** ``handle()`` is called once per *valid* event of the input topic, after
  the event was decoded, put into its window and checked against the alert rules.
  Events the decoder refuses, events stamped too far in the future and late events
  never reach it (they go to the dead-letter topic); with ``--drop-late`` late events
  do reach it (they are only left out of the aggregates).
* **Ordering.** Within one partition, events arrive in offset order, which is the
  order each sensor produced them in (sensors are partitioned by key).
* **Concurrency.** Never concurrently for the same partition: the next event of a
  partition waits until ``handle()`` for the previous one has returned. Events of
  *different* partitions are handled concurrently, by tasks of one event loop, so a
  handler with state shared across partitions must keep it consistent across
  ``await`` points. ``handle()`` runs on the event loop: never block it (use
  ``asyncio.to_thread`` for blocking calls).
* **Exceptions.** If ``handle()`` raises, it is called again for the same event
  with exponential backoff, up to ``--handler-retries`` times (first delay
  ``--handler-backoff`` seconds, doubling). If it still fails, the event goes to the
  dead-letter topic with reason ``handler_failed`` and the exception in the
  ``error`` header, and the partition moves on. Raise ``PoisonEventError`` to say
  "this event can never succeed": it is dead-lettered at once, without retries.
  Cancellation (``asyncio.CancelledError``) is not an error: let it propagate.
* **Commits.** An event's offset is committed only after ``handle()`` returned for
  it (or it was dead-lettered), and after every event before it was done too.
* **At least once.** After a crash, events after the last commit are delivered
  again, so ``handle()`` may see an event twice: make it idempotent, e.g. keyed by
  ``reading.event_id``. Events replayed only to rebuild window state after a clean
  restart are *not* passed to the handler again.
* **Slow handlers.** A slow handler does not get the processor thrown out of its
  consumer group: fetching continues and the partition is paused while its buffer
  is full, so a handler slower than the poll interval delays that partition only
  and causes no redelivery.
* **Lifecycle.** If the handler has ``async def start()`` it is awaited once
  before the first event; ``async def stop()`` once at shutdown, after the last
  ``handle()`` returned. Both are optional.

This module holds only the types and the loader; the processor's runtime does the
calling, retrying and dead-lettering.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from sensorstream.schema import ConfigError, SensorReading

__all__ = [
    "ENTRY_POINT_GROUP",
    "FunctionHandler",
    "Handler",
    "HandlerContext",
    "HandlerFunction",
    "load_handler",
]

ENTRY_POINT_GROUP: Final = "sensorstream.handlers"
"""The entry point group searched by ``load_handler`` for a name without a colon."""

_SETTING: Final = "--handler / SENSORSTREAM_HANDLER"


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerContext:
    """Where the reading came from and who is processing it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    """The Kafka record timestamp, epoch milliseconds."""
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    instance: str
    """This processor instance (host or pod name)."""


@runtime_checkable
class Handler(Protocol):
    """Called once per valid reading; see the module docstring for the full contract.

    Optional lifecycle methods, called when present: ``async def start(self) -> None``
    before the first reading and ``async def stop(self) -> None`` at shutdown.
    """

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        """Process one reading; raise to retry, raise PoisonEventError to dead-letter."""
        ...


HandlerFunction = Callable[[SensorReading, HandlerContext], Awaitable[None]]
"""A bare ``async def handle(reading, context)`` function."""


class FunctionHandler:
    """Adapts a bare async function to the ``Handler`` protocol."""

    __slots__ = ("function",)

    def __init__(self, function: HandlerFunction) -> None:
        self.function = function

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        """Call the wrapped function."""
        await self.function(reading, context)

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"FunctionHandler({self.function.__module__}.{name})"


def load_handler(spec: str) -> Handler:
    """Load the handler named by ``spec``: ``"package.module:attr"`` or an entry point name.

    Raises ``ConfigError`` saying what is wrong and how to name a handler.
    """
    spec = spec.strip()
    if not spec:
        raise _error(spec, "the name is empty")
    target = _import_attribute(spec) if ":" in spec else _load_entry_point(spec)
    return _as_handler(spec, target)


def _import_attribute(spec: str) -> object:
    module_name, _, attribute_path = spec.partition(":")
    if not module_name or not attribute_path:
        raise _error(spec, "expected 'package.module:attribute'")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise _error(spec, f"cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:  # a broken user module must become one clear line
        raise _error(
            spec, f"importing module {module_name!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    for name in attribute_path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise _error(spec, f"{module_name!r} has no attribute {attribute_path!r}") from None
    return target


def _load_entry_point(spec: str) -> object:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=spec)
    if not found:
        known = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        listing = ", ".join(known) if known else "none are installed"
        raise _error(
            spec,
            f"no entry point of that name in group {ENTRY_POINT_GROUP!r} (installed: {listing}); "
            "or give 'package.module:attribute'",
        )
    entry_point = next(iter(found))
    try:
        return entry_point.load()
    except Exception as exc:  # a broken plugin must become one clear line
        raise _error(
            spec,
            f"entry point {entry_point.value!r} failed to load ({type(exc).__name__}: {exc})",
        ) from exc


def _as_handler(spec: str, target: object) -> Handler:
    """Turn a handler instance, class, factory or async function into a ``Handler``."""
    if isinstance(target, Handler) and not isinstance(target, type):
        return _checked(spec, target)
    if inspect.iscoroutinefunction(target):
        return FunctionHandler(target)
    if callable(target):
        try:
            made = target()
        except Exception as exc:  # user code: report it as a configuration problem
            raise _error(
                spec, f"calling {_name(target)}() failed ({type(exc).__name__}: {exc})"
            ) from exc
        if isinstance(made, Handler):
            return _checked(spec, made)
        raise _error(
            spec,
            f"{_name(target)}() returned {type(made).__name__}, which has no "
            "'async def handle(reading, context)' method",
        )
    raise _error(
        spec,
        f"it is a {type(target).__name__}; expected a handler class, a factory or an "
        "'async def handle(reading, context)' function",
    )


def _checked(spec: str, handler: Handler) -> Handler:
    if not inspect.iscoroutinefunction(handler.handle):
        raise _error(spec, f"{type(handler).__name__}.handle must be 'async def'")
    return handler


def _name(target: object) -> str:
    return getattr(target, "__qualname__", None) or repr(target)


def _error(spec: str, problem: str) -> ConfigError:
    return ConfigError(f"cannot load handler {spec!r} (set by {_SETTING}): {problem}")
