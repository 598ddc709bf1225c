"""Run a real local Mosquitto MQTT broker on this machine, without Docker.

The broker is Debian's ``mosquitto`` package (``deploy/install-prereqs`` installs it),
run as a plain process with a configuration of our own: one listener on loopback, and
persistence in the data dir, so a restart (``stop`` then ``start`` on the same data dir)
keeps every persistent session with its subscriptions and queued QoS 1 messages. The same
module backs the ``deploy/mqtt/mosquittoctl`` CLI and the pytest fixtures of the MQTT
bridge (``tests/integration/bridge/conftest.py``).

What the configuration decides for the bridge's guarantees (``docs/bridge.md``):

- ``persistence true`` with ``autosave_interval``: the broker writes its sessions and
  queued messages to ``<data-dir>/data/mosquitto.db`` on a clean shutdown (SIGTERM) and
  every ``autosave_interval`` seconds. A broker killed with SIGKILL loses what arrived
  since the last save; ``stop`` always shuts down cleanly first.
- ``max_queued_messages``: QoS 1 messages the broker holds per offline (or slow) client
  beyond those in flight. Mosquitto's default is 1,000, and it *drops* what comes after;
  here it is a million, so a bridge that is away for minutes under load loses nothing.
- ``max_inflight_messages 0``: no broker-side cap on unacknowledged messages to a client;
  an MQTT 5 client (the bridge) sets its own with Receive Maximum.
- ``user``: Mosquitto started as root drops to the ``mosquitto`` user unless told to stay;
  the configuration names the user that runs it, so the data dir stays writable.

Users (``start(users={"bridge": "secret"})``, ``--user NAME:PASSWORD``) turn anonymous
access off and write a password file with ``mosquitto_passwd`` (the password briefly shows
in its arguments: fine on loopback, not on a shared host).

Layout of a data dir (default ``.cache/mosquitto/run``)::

  state.json        port and pid of the running broker
  mosquitto.conf    written by every start
  passwords         only with users (mode 0600)
  mosquitto.log
  data/             mosquitto.db, the persisted sessions

This module uses the standard library only, so it runs before ``uv sync``. It never
touches a process it did not start: ``stop`` signals the pid in its own state file, and
only while that process's command line still names this data dir's configuration.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # deploy/: procctl
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import procctl

__all__ = [
    "DEFAULT_PORT",
    "MosquittoBroker",
    "MosquittoctlError",
    "main",
    "stable_free_port",
    "start",
    "status",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".cache" / "mosquitto" / "run"
DEFAULT_PORT = 1883
HOST = procctl.HOST
STATE_FILE = "state.json"
CONFIG_FILE = "mosquitto.conf"
PASSWORD_FILE = "passwords"  # noqa: S105 - a file name, not a password
LOG_FILE = "mosquitto.log"
START_TIMEOUT = 15.0
STOP_GRACE_SECONDS = 10.0
MAX_QUEUED_MESSAGES = 1_000_000
AUTOSAVE_SECONDS = 30
EXIT_NOT_RUNNING = 3


class MosquittoctlError(Exception):
    """A failure with a one-line message that says what to do about it."""


@dataclass(frozen=True)
class MosquittoBroker:
    """A broker started from ``data_dir``: where it listens and which process it is."""

    data_dir: str
    port: int
    pid: int
    users: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return Path(self.data_dir) / LOG_FILE


def require_mosquitto() -> str:
    """The ``mosquitto`` executable, or an error saying how to install it."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoctlError(
        "mosquitto is not installed; run deploy/install-prereqs (apt-get install mosquitto)"
    )


def config_text(data_dir: Path, port: int, *, with_passwords: bool) -> str:
    """The broker's configuration for ``data_dir`` (see the module doc for each choice)."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    auth = (
        f"allow_anonymous false\npassword_file {data_dir / PASSWORD_FILE}\n"
        if with_passwords
        else "allow_anonymous true\n"
    )
    return (
        "# Written by deploy/mqtt/mosquittoctl.py; rewritten on every start.\n"
        f"user {user}\n"
        "per_listener_settings false\n"
        f"listener {port} {HOST}\n"
        f"{auth}"
        "persistence true\n"
        f"persistence_location {data_dir / 'data'}/\n"
        f"autosave_interval {AUTOSAVE_SECONDS}\n"
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        "max_queued_bytes 0\n"
        "max_inflight_messages 0\n"
        f"log_dest file {data_dir / LOG_FILE}\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        "connection_messages true\n"
        "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
    )


def _write_passwords(data_dir: Path, users: Mapping[str, str]) -> None:
    path = data_dir / PASSWORD_FILE
    path.unlink(missing_ok=True)
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for index, (name, password) in enumerate(sorted(users.items())):
        if not name or ":" in name:
            raise MosquittoctlError(f"a user name must be non-empty without ':', got {name!r}")
        flags = ["-b", "-c"] if index == 0 else ["-b"]
        try:
            subprocess.run(
                [tool, *flags, str(path), name, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MosquittoctlError(f"mosquitto_passwd failed for user {name!r}: {exc}") from exc
    path.chmod(0o600)


# --------------------------------------------------------------------------- processes


def _pid_is_broker(pid: int, data_dir: Path) -> bool:
    """True while ``pid`` is a live mosquitto of ``data_dir`` (not a reused pid, not a zombie)."""
    process = procctl.live_process(pid)
    return process is not None and str(data_dir / CONFIG_FILE) in process.args


def _read_state(data_dir: Path) -> MosquittoBroker | None:
    raw = procctl.read_json(data_dir / STATE_FILE)
    try:
        return MosquittoBroker(
            data_dir=raw["data_dir"],
            port=int(raw["port"]),
            pid=int(raw["pid"]),
            users=tuple(raw.get("users", ())),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _write_state(broker: MosquittoBroker) -> None:
    procctl.write_json(Path(broker.data_dir) / STATE_FILE, asdict(broker))


def stable_free_port(*, lowest: int = 20000) -> int:
    """A free port below the kernel's ephemeral range.

    A broker that is restarted must get its port back: an ephemeral port may meanwhile be
    taken as the source port of any outgoing connection, one below the range only by a
    process that binds it on purpose.
    """
    try:
        return procctl.stable_free_ports(1, lowest=lowest, min_span=100)[0]
    except procctl.NoFreePorts as exc:
        raise MosquittoctlError(f"no free port in {exc.lowest}-{exc.highest}") from None


def status(data_dir: Path = DEFAULT_DATA_DIR) -> MosquittoBroker | None:
    """The broker running from ``data_dir``, or None."""
    data_dir = Path(data_dir).resolve()
    broker = _read_state(data_dir)
    if broker is None or not _pid_is_broker(broker.pid, data_dir):
        return None
    return broker


def start(
    data_dir: Path = DEFAULT_DATA_DIR,
    *,
    port: int | None = None,
    users: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> MosquittoBroker:
    """Start a broker from ``data_dir`` and return once it accepts connections.

    ``port`` None reuses the port recorded for ``data_dir`` (a restart keeps its address),
    else :data:`DEFAULT_PORT`. A broker already running from ``data_dir`` is returned as
    it is. The sessions persisted in ``data_dir`` are loaded again.
    """
    data_dir = Path(data_dir).resolve()
    running = status(data_dir)
    if running is not None:
        return running
    executable = require_mosquitto()
    recorded = _read_state(data_dir)
    if port is None:
        port = recorded.port if recorded is not None else DEFAULT_PORT
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    names: tuple[str, ...] = ()
    if users:
        _write_passwords(data_dir, users)
        names = tuple(sorted(users))
    elif recorded is not None and recorded.users and (data_dir / PASSWORD_FILE).exists():
        names = recorded.users  # a restart keeps the users it was given
    with_passwords = bool(names)
    if procctl.port_in_use(port):
        raise MosquittoctlError(
            f"port {port} on {HOST} is taken; choose another with --port (mosquittoctl start "
            "--port N)"
        )
    config = data_dir / CONFIG_FILE
    config.write_text(config_text(data_dir, port, with_passwords=with_passwords))
    log = data_dir / LOG_FILE
    process = procctl.spawn([executable, "-c", str(config)], log)
    broker = MosquittoBroker(data_dir=str(data_dir), port=port, pid=process.pid, users=names)
    _write_state(broker)

    def exited() -> None:
        if process.poll() is not None:
            raise MosquittoctlError(
                f"mosquitto exited with status {process.returncode} at start; its log "
                f"({log}) ends with:\n{procctl.tail(log)}"
            )

    if procctl.wait_for(
        lambda: procctl.accepts(port), timeout=timeout, interval=0.05, check=exited
    ):
        return broker
    procctl.signal_group(process.pid, signal.SIGKILL)
    raise MosquittoctlError(
        f"mosquitto did not accept connections on {HOST}:{port} within {timeout:g} s; its log "
        f"({log}) ends with:\n{procctl.tail(log)}"
    )


def stop(
    data_dir: Path = DEFAULT_DATA_DIR, *, hard: bool = False, grace: float = STOP_GRACE_SECONDS
) -> bool:
    """Stop the broker of ``data_dir``: SIGTERM (it saves its sessions), SIGKILL after
    ``grace`` s; ``hard`` SIGKILLs at once (a crash: what came since the last autosave
    is lost). True if it was running. The state file keeps the port for the next start."""
    data_dir = Path(data_dir).resolve()
    broker = _read_state(data_dir)
    if broker is None or not _pid_is_broker(broker.pid, data_dir):
        return False
    procctl.stop_group(
        broker.pid, lambda: _pid_is_broker(broker.pid, data_dir), grace=grace, hard=hard
    )
    # The listener must be free before a restart binds it again.
    procctl.wait_for(lambda: not procctl.accepts(broker.port), timeout=5.0, interval=0.02)
    return True


# --------------------------------------------------------------------------- CLI


def _user(text: str) -> tuple[str, str]:
    name, colon, password = text.partition(":")
    if not colon or not name or not password:
        raise argparse.ArgumentTypeError(f"--user wants NAME:PASSWORD, got {text!r}")
    return name, password


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mosquittoctl", description="Run a local Mosquitto MQTT broker (see mosquittoctl.py)."
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default: .cache/mosquitto/run"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start the broker (prints host:port last)")
    start_cmd.add_argument("--port", type=int, default=None, help=f"default {DEFAULT_PORT}")
    start_cmd.add_argument(
        "--user", type=_user, action="append", default=[], help="NAME:PASSWORD (repeatable)"
    )
    stop_cmd = commands.add_parser("stop", help="stop it (SIGTERM: sessions are saved)")
    stop_cmd.add_argument("--hard", action="store_true", help="SIGKILL: a crash")
    commands.add_parser("status", help="exit 0 when running, 3 when not")
    commands.add_parser("logs", help="print the broker's log")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            users = dict(args.user) or None
            broker = start(args.data_dir, port=args.port, users=users)
            print(broker.address)
            return 0
        if args.command == "stop":
            print("stopped" if stop(args.data_dir, hard=args.hard) else "not running")
            return 0
        if args.command == "status":
            running = status(args.data_dir)
            if running is None:
                print("not running")
                return EXIT_NOT_RUNNING
            print(f"running: {running.address} (pid {running.pid})")
            return 0
        print(Path(args.data_dir, LOG_FILE).read_text(errors="replace"), end="")
        return 0
    except MosquittoctlError as exc:
        print(f"mosquittoctl: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mosquittoctl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
