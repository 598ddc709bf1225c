"""The local stack's supervision: the processes it started, how they are spawned, waited
for and stopped (``deploy/local/stack.py`` runs them; this module knows nothing of
Sensorstream itself).

Every service is a :class:`Child` leading its own process group, with
:data:`MARKER_ENV` in its environment so ``stack.py stop`` can tell our processes from
anyone else's. Mosquitto and PostgreSQL are not children: their ctl modules
(``deploy/mqtt/mosquittoctl.py``, ``deploy/postgres/pgctl.py``) start and stop them, and
:class:`Stack` keeps where they run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _ctl in ("kafka", "mqtt", "postgres"):
    if str(REPO / "deploy" / _ctl) not in sys.path:
        sys.path.insert(0, str(REPO / "deploy" / _ctl))

import kafkactl  # noqa: E402
import mosquittoctl  # noqa: E402
import pgctl  # noqa: E402

__all__ = [
    "HOST",
    "MARKER_ENV",
    "READY_TIMEOUT",
    "REPO",
    "STOP_GRACE",
    "Child",
    "Stack",
    "StackError",
    "StopRequested",
    "force_stop",
    "forced",
    "free_port",
    "free_ports",
    "http_get",
    "kafkactl",
    "mosquittoctl",
    "pgctl",
    "signal_group",
    "spawn",
    "stop_children",
    "tail",
    "wait_http",
    "wait_log",
]

HOST = "127.0.0.1"
MARKER_ENV = "SENSORSTREAM_LOCAL_STACK_DIR"  # not a service setting: identifies our children
STOP_GRACE = 20.0  # services flush and commit within their shutdown_timeout (15 s)
READY_TIMEOUT = 60.0


class StackError(Exception):
    """A start-up failure with a one-line message that says what to do."""


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """SIGTERM/SIGHUP arrived: stop like on Ctrl-C."""


@dataclass
class Child:
    """A process we started, leading its own process group."""

    name: str
    role: str  # producer | processor | audit | bridge | devices | sink | prometheus
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None  # None: no HTTP endpoint (the device simulator)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str | None:
        return None if self.port is None else f"http://{HOST}:{self.port}"


@dataclass
class Stack:
    """What one ``make run`` started, and where."""

    state_dir: Path
    kafka_dir: Path
    bootstrap: str = ""
    children: list[Child] = field(default_factory=list)
    prometheus_url: str | None = None
    kafka_started: bool = False
    mosquitto_dir: Path | None = None  # set once Mosquitto is to be started
    mosquitto: mosquittoctl.MosquittoBroker | None = None
    postgres_dir: Path | None = None  # set once PostgreSQL is to be started
    postgres: pgctl.PostgresServer | None = None
    postgres_scratch: bool = False  # postgres_dir is a /tmp dir of its own, removed at stop

    def services(self, role: str) -> list[Child]:
        return [child for child in self.children if child.role == role]


_force = False


def force_stop() -> None:
    """A second Ctrl-C: skip the grace periods from now on."""
    global _force
    _force = True


def forced() -> bool:
    return _force


def spawn(
    stack: Stack, *, name: str, role: str, argv: list[str], env: dict[str, str], port: int | None
) -> Child:
    log = stack.state_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, MARKER_ENV: str(stack.state_dir)},
            start_new_session=True,  # own group: Ctrl-C reaches us only; we stop it in order
            cwd=REPO,
        )
    child = Child(name=name, role=role, process=process, log=log, port=port)
    stack.children.append(child)
    return child


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_children(children: Sequence[Child], *, grace: float = STOP_GRACE) -> None:
    """SIGTERM each group, wait up to ``grace`` s (less after a second Ctrl-C), SIGKILL."""
    alive = [child for child in children if child.process.poll() is None]
    for child in alive:
        signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline and not _force:
        time.sleep(0.1)
        alive = [child for child in alive if child.process.poll() is None]
    for child in children:
        # Also the group of an exited leader: a stray grandchild must not outlive us.
        signal_group(child.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)


def free_port(preferred: int | None = None) -> int:
    if preferred and not kafkactl._port_in_use(preferred):
        return preferred
    return kafkactl.free_port()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the kernel may hand one out twice)."""
    ports: list[int] = []
    while len(ports) < count:
        candidate = kafkactl.free_port()
        if candidate not in ports:
            ports.append(candidate)
    return ports


def http_get(url: str, timeout: float = 1.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our URLs
        return bytes(response.read())


def _exited(child: Child) -> StackError:
    return StackError(
        f"{child.name} exited with status {child.process.returncode}; "
        f"log {child.log}:\n{tail(child.log)}"
    )


def wait_http(child: Child, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Until ``child`` answers ``path`` with 2xx; a StackError if it exits or never does."""
    assert child.url is not None, child.name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise _exited(child)
        with contextlib.suppress(OSError, urllib.error.URLError):
            http_get(child.url + path)
            return
        time.sleep(0.2)
    raise StackError(f"{child.name} did not answer {child.url}{path} within {timeout:.0f} s")


def wait_log(child: Child, needle: str, timeout: float = READY_TIMEOUT) -> None:
    """Until ``needle`` is in ``child``'s log (a process without an HTTP endpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise _exited(child)
        with contextlib.suppress(OSError):
            if needle in child.log.read_text(errors="replace"):
                return
        time.sleep(0.2)
    raise StackError(f"{child.name} did not log {needle} within {timeout:.0f} s; log {child.log}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
