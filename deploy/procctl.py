"""Process control shared by the local servers' ctl scripts and the ``make run`` stack.

``deploy/kafka/kafkactl.py``, ``deploy/mqtt/mosquittoctl.py``, ``deploy/postgres/pgctl.py``
and ``deploy/local/stack_processes.py`` each start server processes, tell them from
anyone else's, stop them and wait for their ports; this module is how, once:

- ports: :func:`port_in_use`, :func:`free_port` (the kernel's pick, an ephemeral port),
  :func:`stable_free_ports` (below the ephemeral range: one a restarted server gets back),
  :func:`accepts` (something listens);
- processes: :func:`spawn` (own session and process group, output to a log file),
  :func:`live_process`, :func:`read_cmdline` and :func:`environ_value` (what
  ``/proc/<pid>`` says: is that pid still ours), :func:`still_exiting`,
  :func:`signal_group`, :func:`stop_group` and :func:`stop_groups` (SIGTERM, a grace
  period, SIGKILL);
- waiting and files: :func:`wait_for`, :func:`read_json`, :func:`write_json` (a state
  file, replaced atomically) and :func:`tail` (the end of a log, for error messages).

What is particular to a server (which command line is its own, what its state file
holds, the wording of its errors) stays in its ctl script. Standard library only: the
ctl scripts run before ``uv sync``. The scripts find this file by putting ``deploy/`` on
``sys.path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HOST",
    "LiveProcess",
    "NoFreePorts",
    "accepts",
    "environ_value",
    "ephemeral_port_range",
    "free_port",
    "live_process",
    "port_in_use",
    "read_cmdline",
    "read_json",
    "signal_group",
    "spawn",
    "stable_free_ports",
    "still_exiting",
    "stop_group",
    "stop_groups",
    "tail",
    "wait_for",
    "write_json",
]

HOST = "127.0.0.1"
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)  # Linux's default
_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


# --------------------------------------------------------------------------- ports


class NoFreePorts(Exception):  # noqa: N818 - callers turn it into their own error
    """:func:`stable_free_ports` found only ``found`` of the ports asked for."""

    def __init__(self, found: int, lowest: int, highest: int) -> None:
        super().__init__(f"found only {found} free ports in {lowest}-{highest}")
        self.found = found
        self.lowest = lowest
        self.highest = highest


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when ``port`` on ``host`` cannot be bound (a listener, or a connection on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's ephemeral (outgoing source) port range, Linux's default if unknown."""
    try:
        low, high = _PORT_RANGE_FILE.read_text().split()
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    return (int(low), int(high))


def stable_free_ports(count: int, *, lowest: int = 20000, min_span: int | None = None) -> list[int]:
    """``count`` distinct free ports below the kernel's ephemeral range, ascending.

    A port the kernel picked (:func:`free_port`) is an ephemeral port, which any outgoing
    connection may take as its source port while the server that owns it is down; then
    the server cannot come back on it. Ports below the ephemeral range are only ever
    taken by a process that binds them on purpose.

    When fewer than ``min_span`` (default ``10 * count``) ports lie between ``lowest`` and
    the range, the search starts at 1024 instead. The probe order is random, so two test
    sessions starting at once rarely pick the same port. :class:`NoFreePorts` if too few
    are free.
    """
    highest = ephemeral_port_range()[0] - 1
    if highest - lowest < (10 * count if min_span is None else min_span):
        lowest = 1024
    picked: set[int] = set()
    for candidate in random.sample(range(lowest, highest + 1), highest + 1 - lowest):
        if not port_in_use(candidate):
            picked.add(candidate)
            if len(picked) == count:
                return sorted(picked)
    raise NoFreePorts(len(picked), lowest, highest)


def accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` leading its own session (and so process group), stdin closed, its
    stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
            cwd=cwd,
        )


@dataclass(frozen=True)
class LiveProcess:
    """What ``/proc/<pid>`` says of a running process."""

    args: list[str]
    """Its command line; ``[""]`` for a process that has just exec'ed, before the kernel
    filled in the arguments, and ``[..., ""]`` (a trailing empty string) otherwise."""
    stat: str
    """The raw ``/proc/<pid>/stat`` line; its command name stands in parentheses."""


def _state_letter(stat: str) -> str:
    return stat.rsplit(")", 1)[-1].split()[0]


def live_process(pid: int) -> LiveProcess | None:
    """``pid``'s command line, or None if it is not running (or is a zombie).

    A child of ours that has exited is reaped first (the pytest fixtures start servers
    as children). ``pid <= 0`` is never a process: signalling 0 or -1 would reach our own
    group or everything.
    """
    if pid <= 0:
        return None
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if _state_letter(stat) in ("Z", "X"):
        return None
    return LiveProcess(args=[arg.decode(errors="replace") for arg in cmdline], stat=stat)


def read_cmdline(pid: int) -> list[str] | None:
    """``pid``'s command line as ``/proc`` has it (no zombie check, no reaping); None if
    there is no such process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in cmdline]


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in ``pid``'s environment, None if unset or unreadable."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{name}=".encode()
    for entry in environ:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def still_exiting(pid: int) -> bool:
    """A zombie main thread whose other threads still run, and still hold its sockets."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    return _state_letter(stat) in ("Z", "X") and threads > 1


def signal_group(pid: int, signum: signal.Signals, *, permission_ok: bool = False) -> None:
    """Signal the process group that ``pid`` leads; one that is gone is no error, and
    with ``permission_ok`` neither is one we may not signal."""
    ignored: tuple[type[OSError], ...] = (ProcessLookupError,)
    if permission_ok:
        ignored += (PermissionError,)
    with contextlib.suppress(*ignored):
        os.killpg(pid, signum)


def stop_group(
    pid: int,
    alive: Callable[[], bool],
    *,
    grace: float,
    hard: bool = False,
    poll: float = 0.02,
) -> None:
    """SIGTERM ``pid``'s group (SIGKILL with ``hard``), SIGKILL it if it is still
    ``alive`` after ``grace`` s, and return once it is not."""
    signal_group(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive():
        if time.monotonic() > deadline:
            signal_group(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(poll)


def stop_groups(
    pids: Sequence[int],
    alive: Callable[[int], bool],
    *,
    grace: float,
    poll: float = 0.1,
    cut_short: Callable[[Sequence[int]], float | None] | None = None,
    permission_ok: bool = False,
) -> list[int]:
    """SIGTERM the group of every ``alive`` pid at once, wait up to ``grace`` s for them
    to exit, SIGKILL the groups left; return the pids that were alive at first.

    ``cut_short(still_alive)``, asked after every ``poll``, may return how many seconds
    more are worth waiting (None: the whole grace). Returns without waiting for the
    SIGKILLed processes to go.
    """
    first = [pid for pid in pids if alive(pid)]
    for pid in first:
        signal_group(pid, signal.SIGTERM, permission_ok=permission_ok)
    left = list(first)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(poll)
        left = [pid for pid in left if alive(pid)]
        if cut_short is not None and (more := cut_short(left)) is not None:
            deadline = min(deadline, time.monotonic() + more)
    for pid in left:
        signal_group(pid, signal.SIGKILL, permission_ok=permission_ok)
    return first


# --------------------------------------------------------------------------- waiting, files


def wait_for(
    ready: Callable[[], bool],
    *,
    timeout: float,
    interval: float,
    check: Callable[[], None] | None = None,
) -> bool:
    """Call ``check`` (which raises to give up, e.g. when the process exited), then
    ``ready``, every ``interval`` s: True once ``ready`` is, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        if ready():
            return True
        time.sleep(interval)
    return False


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None if it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically (a reader never sees half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def tail(path: Path, lines: int = 20, *, missing: str | None = None) -> str:
    """The last ``lines`` lines of the log ``path``; ``missing`` (default
    ``(no log at <path>)``) if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})" if missing is None else missing
