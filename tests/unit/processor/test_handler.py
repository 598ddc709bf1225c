"""The handler extension point: HandlerContext and load_handler()."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from typing import Any

import pytest

from sensorstream.processor.example_handler import HighHumidityCounter
from sensorstream.processor.handler import (
    ENTRY_POINT_GROUP,
    FunctionHandler,
    Handler,
    HandlerContext,
    load_handler,
)
from sensorstream.schema import ConfigError, SensorReading

READING = SensorReading(
    schema_version=1,
    event_id="00000000-0000-4000-8000-000000000000",
    sensor_id="sensor-0001",
    seq=0,
    event_time=1_700_000_000_000,
    temperature=20.0,
    humidity=50.0,
)
CONTEXT = HandlerContext(
    topic="sensor-data",
    partition=0,
    offset=7,
    timestamp=1_700_000_000_001,
    key=b"sensor-0001",
    headers=[],
    instance="test",
)
SEEN: list[tuple[SensorReading, HandlerContext]] = []


class ClassHandler:
    """A handler class with a no-argument constructor."""

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        SEEN.append((reading, context))


async def function_handler(reading: SensorReading, context: HandlerContext) -> None:
    """A bare async function."""
    SEEN.append((reading, context))


def factory() -> ClassHandler:
    """A factory returning a handler."""
    return ClassHandler()


INSTANCE = ClassHandler()


class SyncHandler:
    """Wrong: handle() is not async."""

    def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        SEEN.append((reading, context))


class BrokenConstructor:
    """Wrong: raises when instantiated."""

    def __init__(self) -> None:
        raise RuntimeError("no database URL")


def not_a_handler() -> int:
    """Wrong: the factory returns something without handle()."""
    return 42


NOT_CALLABLE = 42


def run_handle(handler: Handler) -> list[tuple[SensorReading, HandlerContext]]:
    SEEN.clear()
    asyncio.run(handler.handle(READING, CONTEXT))
    return list(SEEN)


class TestHandlerContext:
    def test_is_frozen(self) -> None:
        """A handler cannot change the context another step relies on."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            CONTEXT.offset = 8  # type: ignore[misc]


class TestLoadByImportPath:
    def test_class_is_instantiated(self) -> None:
        """'module:Class' gives an instance of the class."""
        handler = load_handler(f"{__name__}:ClassHandler")

        assert isinstance(handler, ClassHandler)
        assert [(READING, CONTEXT)] == run_handle(handler)

    def test_async_function_is_wrapped(self) -> None:
        """'module:async_function' is wrapped into a Handler calling it."""
        handler = load_handler(f"{__name__}:function_handler")

        assert isinstance(handler, FunctionHandler)
        assert [(READING, CONTEXT)] == run_handle(handler)

    def test_factory_is_called(self) -> None:
        """'module:factory' gives what the factory returns."""
        assert isinstance(load_handler(f"{__name__}:factory"), ClassHandler)

    def test_instance_is_used_as_is(self) -> None:
        """'module:instance' gives that very object."""
        assert INSTANCE is load_handler(f"{__name__}:INSTANCE")

    def test_dotted_attribute(self) -> None:
        """'module:Outer.attr' follows attributes."""
        assert isinstance(load_handler(f"{__name__}:TestLoadByImportPath.NESTED"), ClassHandler)

    NESTED = ClassHandler

    def test_the_shipped_example(self) -> None:
        """The example handler from the docs loads."""
        spec = "sensorstream.processor.example_handler:HighHumidityCounter"

        assert isinstance(load_handler(spec), HighHumidityCounter)


class TestLoadByEntryPoint:
    @pytest.fixture
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Pretend a distribution registers 'humid' in the handler group."""
        entry_point = importlib.metadata.EntryPoint(
            name="humid",
            value="sensorstream.processor.example_handler:HighHumidityCounter",
            group=ENTRY_POINT_GROUP,
        )
        broken = importlib.metadata.EntryPoint(
            name="broken", value="no_such_module_xyz:Handler", group=ENTRY_POINT_GROUP
        )
        everything = importlib.metadata.EntryPoints((entry_point, broken))

        def entry_points(**selection: Any) -> importlib.metadata.EntryPoints:
            return everything.select(**selection)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    @pytest.mark.usefixtures("installed")
    def test_loads_by_name(self) -> None:
        """A name without a colon is looked up in the sensorstream.handlers group."""
        assert isinstance(load_handler("humid"), HighHumidityCounter)

    @pytest.mark.usefixtures("installed")
    def test_unknown_name_lists_the_installed_ones(self) -> None:
        """The error names the group and the entry points that do exist."""
        with pytest.raises(ConfigError, match=r"sensorstream\.handlers.*broken, humid"):
            load_handler("humidity")

    @pytest.mark.usefixtures("installed")
    def test_entry_point_that_fails_to_load(self) -> None:
        """A broken plugin becomes a one-line ConfigError."""
        with pytest.raises(ConfigError, match="no_such_module_xyz"):
            load_handler("broken")


class TestLoadErrors:
    @pytest.mark.parametrize(
        ("spec", "problem"),
        [
            ("", "empty"),
            ("no_such_module_xyz:Handler", "cannot import module 'no_such_module_xyz'"),
            (f"{__name__}:Missing", "has no attribute 'Missing'"),
            (f"{__name__}:", "expected 'package.module:attribute'"),
            (":ClassHandler", "expected 'package.module:attribute'"),
            (f"{__name__}:SyncHandler", "handle must be 'async def'"),
            (f"{__name__}:BrokenConstructor", "no database URL"),
            (f"{__name__}:not_a_handler", "returned int"),
            (f"{__name__}:NOT_CALLABLE", "it is a int"),
            ("no-such-entry-point", "no entry point of that name"),
        ],
    )
    def test_clear_config_error(self, spec: str, problem: str) -> None:
        """Each failure names the setting (flag and variable) and what is wrong."""
        with pytest.raises(ConfigError) as caught:
            load_handler(spec)

        message = str(caught.value)
        assert "--handler" in message
        assert "SENSORSTREAM_HANDLER" in message
        assert problem in message
