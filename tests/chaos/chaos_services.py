"""The real services of a chaos scenario, as subprocesses: one producer, a processor group.

``ProducerProcess`` runs ``python -m sensorstream.producer`` and reads its /metrics
(``sensorstream_producer_events_sent_total`` / ``..._events_acked_total``, see
``services/producer/src/sensorstream/producer/_metrics.py``) and its final log line.
``ProcessorGroup`` starts replicas with ``processor_support.start_processor`` and
remembers which ones the scenario killed on purpose, so that any other exit at the end
is a failure of the service, not of the scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from processor_support import Processor, Topics, free_port, start_processor
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ProcessorGroup", "ProducerCounts", "ProducerProcess"]

SENT = "sensorstream_producer_events_sent_total"
ACKED = "sensorstream_producer_events_acked_total"
BEHIND = "sensorstream_producer_behind_schedule_seconds"
ASSIGNED = "sensorstream_processor_assigned_partitions"
PRODUCER_READY_WITHIN = 60.0
STOP_GRACE_SECONDS = 60.0


@dataclass
class ProducerCounts:
    """What the producer says it did: events handed to the client, and acknowledged."""

    sent: int = 0
    acked: int = 0

    def __add__(self, other: ProducerCounts) -> ProducerCounts:
        return ProducerCounts(self.sent + other.sent, self.acked + other.acked)


def scrape(port: int) -> dict[str, float]:
    """A service's /metrics as ``{sample name: value}`` (labelled samples summed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
        text = response.read().decode()
    values: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] += sample.value
    return dict(values)


@dataclass
class ProducerProcess:
    """One run of ``sensorstream-producer``, logging JSON to ``log_path``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    argv: tuple[str, ...]

    @classmethod
    def start(cls, bootstrap: str, topic: str, log_dir: Path, *argv: str) -> ProducerProcess:
        port = free_port()
        log_path = log_dir / f"producer-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "sensorstream.producer",
                    "--bootstrap-servers", bootstrap, "--topic", topic,
                    "--metrics-port", str(port), "--log-format", "json",
                    "--summary-interval", "5", "--shutdown-timeout", "45",
                    *argv,
                ],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return cls(proc=proc, port=port, log_path=log_path, argv=(bootstrap, topic, *argv))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    async def metrics(self) -> dict[str, float]:
        """/metrics, asked up to three times (a busy machine may miss one answer)."""
        for _ in range(2):
            with contextlib.suppress(OSError):
                return await asyncio.to_thread(scrape, self.port)
            await asyncio.sleep(0.2)
        return await asyncio.to_thread(scrape, self.port)

    async def counts(self) -> ProducerCounts:
        values = await self.metrics()
        return ProducerCounts(int(values.get(SENT, 0)), int(values.get(ACKED, 0)))

    async def behind_schedule(self) -> float:
        return (await self.metrics()).get(BEHIND, 0.0)

    async def wait_acking(self, at_least: int = 1, within: float = PRODUCER_READY_WITHIN) -> None:
        """Return once the broker has acknowledged ``at_least`` events of this run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if not self.running:
                raise AssertionError(f"producer exited {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, ValueError):
                if (await self.counts()).acked >= at_least:
                    return
            if loop.time() > deadline:
                raise AssertionError(
                    f"producer acknowledged fewer than {at_least} in {within:g} s: {self.tail()}"
                )
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        """``kill -9``: nothing flushed, no final line."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self) -> int:
        """SIGTERM: stop generating, drain what is in flight; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def final_line(self) -> dict[str, Any] | None:
        """The ``producer_stopped`` (or ``..._with_losses``) line, once it exited."""
        for raw in reversed(self.log_path.read_bytes().splitlines()):
            if raw.startswith(b"{") and b'"producer_stopped' in raw:
                line: dict[str, Any] = orjson.loads(raw)
                return line
        return None

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class ProcessorGroup:
    """Processor replicas sharing one group; the scenario may kill and start them."""

    bootstrap: str
    topics: Topics
    log_dir: Path
    env: dict[str, str]
    members: list[Processor] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    """Pids the scenario killed on purpose."""

    def start_one(self) -> Processor:
        processor = start_processor(self.bootstrap, self.topics, self.log_dir, **self.env)
        self.members.append(processor)
        return processor

    async def start(self, count: int) -> list[Processor]:
        """``count`` new replicas, returned once each is ready (has had an assignment)."""
        started = [self.start_one() for _ in range(count)]
        await asyncio.gather(*(p.wait_ready(within=60) for p in started))
        return started

    def running(self) -> list[Processor]:
        return [p for p in self.members if p.proc.poll() is None]

    def kill(self, processor: Processor) -> None:
        """SIGKILL on purpose (not counted as a crash)."""
        self.killed.add(processor.pid)
        processor.kill()

    def crashed(self) -> list[str]:
        """Replicas that exited although the scenario did not kill them."""
        return [
            f"processor pid {p.pid} exited {p.proc.returncode}: {p.logs()[-1500:]}"
            for p in self.members
            if p.proc.poll() is not None and p.pid not in self.killed
        ]

    async def assigned(self, processor: Processor) -> int:
        """Partitions ``processor`` says it holds (its assigned_partitions gauge); 0 when
        it does not answer."""
        try:
            return int(await asyncio.to_thread(processor.metric, ASSIGNED))
        except OSError:
            return 0

    async def stop_all(self) -> None:
        """SIGTERM every running replica at once, SIGKILL whatever is left after a while."""
        running = self.running()
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGCONT)  # a paused one would ignore SIGTERM
                p.proc.send_signal(signal.SIGTERM)

        async def wait(p: Processor) -> None:
            try:
                await asyncio.to_thread(p.proc.wait, 15)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                await asyncio.to_thread(p.proc.wait, 10)

        await asyncio.gather(*(wait(p) for p in running))
