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
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _dir in ("kafka", "mqtt", "postgres", "."):
    if str((REPO / "deploy" / _dir).resolve()) not in sys.path:
        sys.path.insert(0, str((REPO / "deploy" / _dir).resolve()))

import kafkactl  # noqa: E402
import mosquittoctl  # noqa: E402
import pgctl  # noqa: E402
import procctl  # noqa: E402

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
    "procctl",
    "signal_group",
    "spawn",
    "stop_children",
    "tail",
    "wait_http",
    "wait_log",
]

HOST = procctl.HOST
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
    # Its own group: Ctrl-C reaches us only; we stop it in order.
    process = procctl.spawn(argv, log, env={**env, MARKER_ENV: str(stack.state_dir)}, cwd=REPO)
    child = Child(name=name, role=role, process=process, log=log, port=port)
    stack.children.append(child)
    return child


def signal_group(pid: int, sig: signal.Signals) -> None:
    procctl.signal_group(pid, sig, permission_ok=True)


def stop_children(children: Sequence[Child], *, grace: float = STOP_GRACE) -> None:
    """SIGTERM each group, wait up to ``grace`` s (less after a second Ctrl-C), SIGKILL."""
    by_pid = {child.pid: child for child in children}
    procctl.stop_groups(
        list(by_pid),
        lambda pid: by_pid[pid].process.poll() is None,
        grace=grace,
        cut_short=lambda _alive: 0.0 if _force else None,
        permission_ok=True,
    )
    for child in children:
        # Also the group of an exited leader: a stray grandchild must not outlive us.
        signal_group(child.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)


def free_port(preferred: int | None = None) -> int:
    if preferred and not procctl.port_in_use(preferred):
        return preferred
    return procctl.free_port()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the kernel may hand one out twice)."""
    ports: list[int] = []
    while len(ports) < count:
        candidate = procctl.free_port()
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
    url = child.url
    assert url is not None, child.name

    def answers() -> bool:
        with contextlib.suppress(OSError, urllib.error.URLError):
            http_get(url + path)
            return True
        return False

    if not procctl.wait_for(answers, timeout=timeout, interval=0.2, check=_check_running(child)):
        raise StackError(f"{child.name} did not answer {url}{path} within {timeout:.0f} s")


def wait_log(child: Child, needle: str, timeout: float = READY_TIMEOUT) -> None:
    """Until ``needle`` is in ``child``'s log (a process without an HTTP endpoint)."""

    def logged() -> bool:
        with contextlib.suppress(OSError):
            return needle in child.log.read_text(errors="replace")
        return False

    if not procctl.wait_for(logged, timeout=timeout, interval=0.2, check=_check_running(child)):
        raise StackError(
            f"{child.name} did not log {needle} within {timeout:.0f} s; log {child.log}"
        )


def _check_running(child: Child) -> Callable[[], None]:
    def check() -> None:
        if child.process.poll() is not None:
            raise _exited(child)

    return check


def tail(path: Path, lines: int = 15) -> str:
    return procctl.tail(path, lines, missing="(no log)")
