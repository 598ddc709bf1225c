"""A handler for the reliability tests: records every handled event, optionally slowly.

Configured by environment variables so a processor subprocess can load it with
``--handler recording_handler:RecordingHandler``:

* ``TEST_HANDLED_LOG``: file that gets one ``<event_id> <partition> <offset>`` line per call;
* ``TEST_SLOW_SEQS``: comma-separated ``seq`` values whose handling sleeps;
* ``TEST_SLOW_SECONDS``: how long those calls sleep.
"""

from __future__ import annotations

import asyncio
import os
from typing import IO

from sensorstream.processor.handler import HandlerContext
from sensorstream.schema import SensorReading


class RecordingHandler:
    """Appends each handled event to ``TEST_HANDLED_LOG``; sleeps on ``TEST_SLOW_SEQS``."""

    def __init__(self) -> None:
        self._path = os.environ["TEST_HANDLED_LOG"]
        seqs = os.environ.get("TEST_SLOW_SEQS", "")
        self._slow = {int(s) for s in seqs.split(",") if s}
        self._delay = float(os.environ.get("TEST_SLOW_SECONDS", "0"))
        self._file: IO[str] | None = None

    async def start(self) -> None:
        self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230 - once, closed in stop()

    async def handle(self, reading: SensorReading, context: HandlerContext) -> None:
        if reading.seq in self._slow and reading.sensor_id.endswith(("0", "1", "2")):
            await asyncio.sleep(self._delay)
        assert self._file is not None
        self._file.write(f"{reading.event_id} {context.partition} {context.offset}\n")
        self._file.flush()

    async def stop(self) -> None:
        if self._file is not None:
            self._file.close()
