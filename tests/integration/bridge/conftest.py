"""Fixtures of the MQTT bridge's tests: a real Mosquitto broker per test.

- ``mosquitto`` (function): a broker of the test's own from ``deploy/mqtt/mosquittoctl.py``
  (the same code as ``deploy/mqtt/mosquittoctl start``), on a free loopback port below the
  ephemeral range (so a restart gets it back), with its persistence under the test's
  ``tmp_path``; stopped at teardown, also after a failure. ``.restart()`` stops it cleanly
  (it saves its sessions) and starts it again on the same port and data;
  ``.restart_async()`` does so in a thread, so the test's clients keep running.
- ``module_mosquitto`` (module): the same, shared by one module's tests.
- ``secured_mosquitto`` (function): the same with anonymous access off and one user,
  ``bridge``, whose password is in ``.password_file``.

Mosquitto starts in well under a second, so every test gets a clean one. Kafka comes from
``tests/conftest.py`` (``kafka_bootstrap``, ``outage_kafka``); the processor and the seq
accounting from the processor tests' helpers (``processor_support``).
"""

from __future__ import annotations

import asyncio
import atexit
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "processor"))
sys.path.insert(0, str(HERE.parents[2] / "deploy" / "mqtt"))

import mosquittoctl  # noqa: E402

START_ATTEMPTS = 3
BRIDGE_PASSWORD = "bridge-secret-7Qx"


@dataclass
class Mosquitto:
    """A test's own broker: where it listens, and how to restart it."""

    data_dir: Path
    port: int
    password_file: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM: sessions saved; ``hard``: SIGKILL) and start on the same port."""
        mosquittoctl.stop(self.data_dir, hard=hard)
        mosquittoctl.start(self.data_dir, port=self.port)

    def stop(self) -> None:
        mosquittoctl.stop(self.data_dir)

    def start(self) -> None:
        mosquittoctl.start(self.data_dir, port=self.port)

    async def restart_async(self, *, hard: bool = False) -> None:
        await asyncio.to_thread(self.restart, hard=hard)


def _start(data_dir: Path, users: dict[str, str] | None = None) -> mosquittoctl.MosquittoBroker:
    last: mosquittoctl.MosquittoctlError | None = None
    for _ in range(START_ATTEMPTS):
        port = mosquittoctl.stable_free_port()
        try:
            return mosquittoctl.start(data_dir, port=port, users=users)
        except mosquittoctl.MosquittoctlError as exc:  # a port taken meanwhile: pick anew
            last = exc
    assert last is not None
    pytest.fail(f"could not start Mosquitto: {last}")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker of this test's own (see ``Mosquitto``)."""
    data_dir = tmp_path / "mosquitto"
    atexit.register(mosquittoctl.stop, data_dir, hard=True)
    broker = _start(data_dir)
    try:
        yield Mosquitto(data_dir=data_dir, port=broker.port)
    finally:
        mosquittoctl.stop(data_dir, hard=True)


@pytest.fixture(scope="module")
def module_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker shared by one module's tests (for fixtures of module scope)."""
    data_dir = tmp_path_factory.mktemp("mosquitto-module")
    atexit.register(mosquittoctl.stop, data_dir, hard=True)
    broker = _start(data_dir)
    try:
        yield Mosquitto(data_dir=data_dir, port=broker.port)
    finally:
        mosquittoctl.stop(data_dir, hard=True)


@pytest.fixture
def secured_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that admits only user ``bridge`` (password in ``.password_file``)."""
    data_dir = tmp_path / "mosquitto-secured"
    atexit.register(mosquittoctl.stop, data_dir, hard=True)
    broker = _start(data_dir, users={"bridge": BRIDGE_PASSWORD})
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(BRIDGE_PASSWORD + "\n")
    try:
        yield Mosquitto(data_dir=data_dir, port=broker.port, password_file=password_file)
    finally:
        mosquittoctl.stop(data_dir, hard=True)
