"""Run a real local PostgreSQL server on this machine, without Docker, for the sink.

The server is the distribution's own (Debian's ``postgresql`` package: binaries in
``/usr/lib/postgresql/<version>/bin``; ``deploy/install-prereqs`` installs it), run as a
plain process: ``initdb`` into a data dir, ``pg_ctl start`` on a loopback port, one
database and one user for the sink. The same module backs the ``deploy/postgres/pgctl``
CLI and the pytest fixtures (``tests/integration/sink/conftest.py``).

PostgreSQL refuses to run as root. Run as root (CI, containers), ``initdb`` and the
server run as the unprivileged ``postgres`` user the Debian package creates, through
``runuser``; the data dir's parents must then be searchable by that user (``/tmp`` and
the repository are; ``/root`` and pytest's ``/tmp/pytest-of-root`` are not: pgctl says
so). Run as anyone else, everything runs as you.

Authentication is ``scram-sha-256`` over TCP on 127.0.0.1 only (no Unix socket, so
nothing depends on ``/var/run/postgresql``). Two passwords are made at ``initdb`` time,
random, in files of mode 0600: the superuser's and the sink user's. A password never
appears in a command line: psql gets it through ``PGPASSWORD`` in its environment.

Layout of a data dir:
  <data-dir>/state.json            version, port, users, database (kept across restarts)
  <data-dir>/pgdata/               the cluster (owned by the server's user, mode 0700)
  <data-dir>/log/server.log        the server's log
  <data-dir>/superuser.password    the ``postgres`` superuser's password (0600)
  <data-dir>/<user>.password       the sink user's password (0600)

``stop`` (``pg_ctl stop -m fast`` by default) keeps everything; ``start`` on the same data
dir brings the same server back on the same port with its data. This module uses the
standard library only, and never touches a server it did not start: ``pg_ctl`` signals
only the postmaster recorded in the data dir's own ``postmaster.pid``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # deploy/: procctl
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import procctl

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "PgctlError",
    "PostgresServer",
    "StopMode",
    "bindir",
    "psql",
    "recorded",
    "running",
    "stable_free_port",
    "start",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".cache" / "postgres" / "run"
DEFAULT_PORT = 5432
DEFAULT_USER = "sensorstream"
DEFAULT_DATABASE = "sensorstream"
SUPERUSER = "postgres"
SERVER_USER_WHEN_ROOT = "postgres"
HOST = procctl.HOST
STATE_FILE = "state.json"
DEFAULT_START_TIMEOUT = 60.0
BINDIR_ENV = "PGCTL_BINDIR"
StopMode = Literal["smart", "fast", "immediate"]
STOP_MODES: tuple[StopMode, ...] = get_args(StopMode)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PgctlError(Exception):
    """A failure with a one-line message that says what to do about it."""


@dataclass(frozen=True)
class PostgresServer:
    """A server started from a data dir, and how to reach its sink database."""

    data_dir: str
    version: str
    port: int
    user: str
    database: str
    server_user: str
    """The operating-system user the server runs as."""
    host: str = HOST

    @property
    def password_file(self) -> Path:
        """The sink user's password (what ``--database-password-file`` takes)."""
        return Path(self.data_dir) / f"{self.user}.password"

    @property
    def superuser_password_file(self) -> Path:
        return Path(self.data_dir) / "superuser.password"

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def superuser_password(self) -> str:
        return self.superuser_password_file.read_text().strip()

    @property
    def pgdata(self) -> Path:
        return Path(self.data_dir) / "pgdata"

    @property
    def log_file(self) -> Path:
        return Path(self.data_dir) / "log" / "server.log"

    def url(self, *, database: str | None = None, with_password: bool = False) -> str:
        """``postgresql://user[:password]@127.0.0.1:port/database``."""
        secret = f":{self.password}" if with_password else ""
        return (
            f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{database or self.database}"
        )

    def sink_environment(self) -> dict[str, str]:
        """The ``SENSORSTREAM_DATABASE_*`` variables that point the sink at this server."""
        return {
            "SENSORSTREAM_DATABASE_HOST": self.host,
            "SENSORSTREAM_DATABASE_PORT": str(self.port),
            "SENSORSTREAM_DATABASE_USER": self.user,
            "SENSORSTREAM_DATABASE_NAME": self.database,
            "SENSORSTREAM_DATABASE_PASSWORD_FILE": str(self.password_file),
        }


# --------------------------------------------------------------------------- binaries


def bindir() -> Path:
    """Where ``initdb``, ``pg_ctl``, ``postgres`` and ``psql`` are.

    ``$PGCTL_BINDIR`` if set; else the newest ``/usr/lib/postgresql/<version>/bin``
    (Debian, Ubuntu); else the directory of ``pg_ctl`` on ``PATH``.
    """
    if explicit := os.environ.get(BINDIR_ENV):
        return _checked_bindir(Path(explicit))
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            versions.append((float(candidate.parent.name), candidate))
    for _, candidate in sorted(versions, reverse=True):
        if (candidate / "pg_ctl").exists():
            return _checked_bindir(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return _checked_bindir(Path(found).resolve().parent)
    raise PgctlError(
        "PostgreSQL is not installed: run deploy/install-prereqs (or apt-get install -y "
        f"--no-install-recommends postgresql), or set {BINDIR_ENV} to its bin directory"
    )


def _checked_bindir(path: Path) -> Path:
    missing = [
        tool for tool in ("initdb", "pg_ctl", "postgres", "psql") if not (path / tool).exists()
    ]
    if missing:
        raise PgctlError(f"{path} lacks {', '.join(missing)}; point {BINDIR_ENV} at a full bin dir")
    return path


def server_version(binaries: Path) -> str:
    out = subprocess.run(
        [str(binaries / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+(?:\.\d+)*)", out)
    return match.group(1) if match else out.strip()


# --------------------------------------------------------------------------- users


def _server_user() -> str:
    """Who runs initdb and the server: ourselves, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(SERVER_USER_WHEN_ROOT)
    except KeyError:
        raise PgctlError(
            f"PostgreSQL refuses to run as root and there is no {SERVER_USER_WHEN_ROOT!r} "
            "user to run it as; install Debian's postgresql package (it creates one) or "
            f"`useradd --system {SERVER_USER_WHEN_ROOT}`"
        ) from None
    return SERVER_USER_WHEN_ROOT


def _as_server_user(argv: Sequence[str], server_user: str) -> list[str]:
    if os.geteuid() == 0 and server_user != "root":
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", server_user, "--", *argv]
        return ["su", server_user, "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in argv)]
    return list(argv)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def _give_to(path: Path, server_user: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(server_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    except OSError as exc:
        raise PgctlError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise PgctlError(f"{what} failed: {' | '.join(detail[-5:]) or f'exit {result.returncode}'}")
    return result


# --------------------------------------------------------------------------- ports


def stable_free_port(*, lowest: int = 20000) -> int:
    """A free port below the kernel's ephemeral range.

    A port in that range may be taken by any outgoing connection while the server is
    down (the outage tests stop it), and then it could not come back on it.
    """
    try:
        return procctl.stable_free_ports(1, lowest=lowest, min_span=100)[0]
    except procctl.NoFreePorts as exc:
        raise PgctlError(f"no free port in {exc.lowest}-{exc.highest}") from None


# --------------------------------------------------------------------------- state


def _read_state(data_dir: Path) -> PostgresServer | None:
    raw = procctl.read_json(data_dir / STATE_FILE)
    try:
        return PostgresServer(**raw)
    except TypeError:  # None (no state), or not a server's fields
        return None


def _write_state(server: PostgresServer) -> None:
    procctl.write_json(Path(server.data_dir) / STATE_FILE, asdict(server))


def recorded(data_dir: Path = DEFAULT_DATA_DIR) -> PostgresServer | None:
    """The server made in ``data_dir`` (running or not); None if there is none."""
    return _read_state(Path(data_dir).resolve())


def _postmaster_pid(server: PostgresServer) -> int | None:
    try:
        first = (server.pgdata / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first)
    except (OSError, ValueError, IndexError):
        return None
    # A pid file left by a crash may name a pid reused by another process since.
    args = procctl.read_cmdline(pid)
    if not args or not args[0].endswith(("postgres", "postmaster")):
        return None
    return pid


def running(data_dir: Path = DEFAULT_DATA_DIR) -> PostgresServer | None:
    """The server of ``data_dir`` if it is running right now."""
    server = recorded(data_dir)
    if server is None or _postmaster_pid(server) is None:
        return None
    return server


# --------------------------------------------------------------------------- start / stop


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _initdb(server: PostgresServer, binaries: Path) -> None:
    base = Path(server.data_dir)
    pgdata, log_dir = server.pgdata, server.log_file.parent
    for directory, mode in ((pgdata, 0o700), (log_dir, 0o700)):
        directory.mkdir(mode=mode, exist_ok=True)
        _give_to(directory, server.server_user)
    check = _as_server_user(["test", "-w", str(pgdata)], server.server_user)
    if subprocess.run(check, check=False).returncode != 0:
        raise PgctlError(
            f"user {server.server_user!r} cannot reach {pgdata}: a parent directory is not "
            "searchable by it (mode 0700?); use a --data-dir whose parents all are, e.g. "
            "under the repository or a new directory of mode 0755 in /tmp"
        )
    _write_secret(server.superuser_password_file, secrets.token_urlsafe(24))
    _write_secret(server.password_file, secrets.token_urlsafe(24))
    # initdb reads the superuser password from a file it must be able to open.
    pwfile = base / ".initdb.pw"
    _write_secret(pwfile, server.superuser_password)
    _give_to(pwfile, server.server_user)
    try:
        _run(
            _as_server_user(
                [
                    str(binaries / "initdb"),
                    "--pgdata",
                    str(pgdata),
                    "--username",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local",
                    "scram-sha-256",
                    "--auth-host",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                    "--no-sync",
                ],
                server.server_user,
            ),
            f"initdb in {pgdata}",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(server.port),
        # TCP only: no socket in /var/run/postgresql, whose owner may not be us.
        "unix_socket_directories": "''",
        "max_connections": "50",
        "shared_buffers": "'64MB'",
        "log_line_prefix": "'%m [%p] %u@%d '",
        "timezone": "'UTC'",
    }
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n# pgctl.py\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")
    hba = f"host all all {HOST}/32 scram-sha-256\n"
    (pgdata / "pg_hba.conf").write_text("# pgctl.py: TCP on loopback, passwords only\n" + hba)


def start(
    data_dir: Path = DEFAULT_DATA_DIR,
    *,
    port: int | None = None,
    user: str = DEFAULT_USER,
    database: str = DEFAULT_DATABASE,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> PostgresServer:
    """Start (making it first if needed) the server of ``data_dir``; return once it serves.

    A new data dir is initialised on ``port`` (default 5432) with the sink's ``user``
    and ``database``; an existing one keeps the port, user and database it was made with
    (a different ``port`` is an error). A server already running is left as it is.
    """
    data_dir = Path(data_dir).resolve()
    for name in (user, database):
        if not _NAME.match(name):
            raise PgctlError(f"{name!r}: use 1-63 lowercase letters, digits and underscores")
    binaries = bindir()
    server = _read_state(data_dir)
    if server is not None and port is not None and port != server.port:
        raise PgctlError(
            f"{data_dir} was made for port {server.port}, not {port}; omit --port or use "
            "another --data-dir"
        )
    if server is not None and _postmaster_pid(server) is not None:
        return server
    fresh = server is None
    if server is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        server_user = _server_user()
        if os.geteuid() == 0:
            data_dir.chmod(0o711)  # searchable (not listable) by the server's user
        server = PostgresServer(
            data_dir=str(data_dir),
            version=server_version(binaries),
            port=DEFAULT_PORT if port is None else port,
            user=user,
            database=database,
            server_user=server_user,
        )
        if procctl.port_in_use(server.port):
            raise PgctlError(f"port {server.port} is in use; choose another with --port")
        try:
            _initdb(server, binaries)
        except BaseException:
            # Half a cluster would make every later start fail: leave the dir as it was.
            for made in (server.pgdata, server.log_file.parent):
                shutil.rmtree(made, ignore_errors=True)
            raise
        _write_state(server)
    elif procctl.port_in_use(server.port):
        raise PgctlError(f"port {server.port} of {data_dir} is in use by another process")
    _run(
        _as_server_user(
            [
                str(binaries / "pg_ctl"),
                "start",
                "--pgdata",
                str(server.pgdata),
                "--log",
                str(server.log_file),
                "--wait",
                "--timeout",
                str(int(timeout)),
                "--silent",
            ],
            server.server_user,
        ),
        f"starting PostgreSQL from {server.pgdata} (log: {server.log_file})",
        stdin=subprocess.DEVNULL,
    )
    _wait_until_serving(server, timeout)
    if fresh:
        _create_user_and_database(server, binaries)
    return server


def _wait_until_serving(server: PostgresServer, timeout: float) -> None:
    def serving() -> bool:
        try:
            psql(server, "SELECT 1", superuser=True, database="postgres")
        except PgctlError:
            return False
        return True

    if procctl.wait_for(serving, timeout=timeout, interval=0.1):
        return
    raise PgctlError(f"PostgreSQL on port {server.port} did not answer; see {server.log_file}")


def _create_user_and_database(server: PostgresServer, binaries: Path) -> None:
    del binaries  # psql() finds it again
    script = (
        f"CREATE ROLE {server.user} LOGIN PASSWORD :'password';\n"
        f"CREATE DATABASE {server.database} OWNER {server.user};\n"
    )
    psql(
        server,
        script,
        superuser=True,
        database="postgres",
        variables={"password": server.password},
    )


def psql(
    server: PostgresServer,
    sql: str,
    *,
    superuser: bool = False,
    database: str | None = None,
    variables: dict[str, str] | None = None,
) -> str:
    """Run ``sql`` with psql (as the sink user, or the superuser); its unaligned output.

    ``variables`` become psql variables (``:'name'`` quotes one as a literal): the way
    to pass a value without building SQL text from it. Raises ``PgctlError`` on failure.
    """
    user = SUPERUSER if superuser else server.user
    password = server.superuser_password if superuser else server.password
    argv = [
        str(bindir() / "psql"),
        "--no-psqlrc",
        "--quiet",
        "--tuples-only",
        "--no-align",
        "--set",
        "ON_ERROR_STOP=1",
        "--host",
        server.host,
        "--port",
        str(server.port),
        "--username",
        user,
        "--dbname",
        database or server.database,
    ]
    for name, value in (variables or {}).items():
        argv += ["--set", f"{name}={value}"]
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    result = _run(argv, f"psql on port {server.port}", input=sql, env=env)
    return result.stdout


def stop(
    data_dir: Path = DEFAULT_DATA_DIR, *, mode: StopMode = "fast", timeout: float = 60.0
) -> bool:
    """Stop the server of ``data_dir`` (``pg_ctl stop -m mode``); True if it was running.

    ``fast`` rolls back open transactions and disconnects clients, then shuts down
    cleanly; ``immediate`` is a crash (recovery at the next start). Data and state stay.
    """
    server = recorded(data_dir)
    if server is None or _postmaster_pid(server) is None:
        return False
    _run(
        _as_server_user(
            [
                str(bindir() / "pg_ctl"),
                "stop",
                "--pgdata",
                str(server.pgdata),
                "--mode",
                mode,
                "--wait",
                "--timeout",
                str(int(timeout)),
                "--silent",
            ],
            server.server_user,
        ),
        f"stopping PostgreSQL in {server.pgdata}",
    )
    return True


# --------------------------------------------------------------------------- CLI


def _describe(server: PostgresServer) -> list[str]:
    return [
        f"PostgreSQL {server.version} on {server.host}:{server.port} (data {server.pgdata})",
        f"  database {server.database}, user {server.user}, password in {server.password_file}",
        f"  url      {server.url()}",
        "  sink     "
        + " ".join(f"{key}={value}" for key, value in server.sink_environment().items()),
        f"  log      {server.log_file}",
    ]


def _cmd_start(args: argparse.Namespace) -> int:
    server = start(
        args.data_dir,
        port=args.port,
        user=args.user,
        database=args.database,
        timeout=args.timeout,
    )
    print("\n".join(_describe(server)))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    print("stopped" if stop(args.data_dir, mode=args.mode) else "not running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    server = running(args.data_dir)
    if server is None:
        print(f"not running ({args.data_dir})")
        return 3
    print("\n".join(_describe(server)))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    server = recorded(args.data_dir)
    if server is None:
        raise PgctlError(f"no server made in {args.data_dir}; run `pgctl start` first")
    for key, value in server.sink_environment().items():
        print(f"export {key}={value}")
    return 0


def _cmd_psql(args: argparse.Namespace) -> int:
    server = running(args.data_dir)
    if server is None:
        raise PgctlError(f"not running ({args.data_dir}); run `pgctl start` first")
    env = {**os.environ, "PGPASSWORD": server.password}
    argv = [
        str(bindir() / "psql"),
        "--host",
        server.host,
        "--port",
        str(server.port),
        "--username",
        server.user,
        "--dbname",
        server.database,
        *args.extra,
    ]
    return subprocess.run(argv, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgctl",
        description="Run a real local PostgreSQL server for the sink, without Docker.",
    )
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where the server keeps data, logs, passwords and state (default {DEFAULT_DATA_DIR})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser(
        "start", parents=[data_dir], help="make (first time) and start the server"
    )
    start_cmd.add_argument("--port", type=int, help=f"first start only (default {DEFAULT_PORT})")
    start_cmd.add_argument("--user", default=DEFAULT_USER, help="the sink's user (first start)")
    start_cmd.add_argument(
        "--database", default=DEFAULT_DATABASE, help="the sink's database (first start)"
    )
    start_cmd.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    stop_cmd = commands.add_parser("stop", parents=[data_dir], help="stop it (idempotent)")
    stop_cmd.add_argument("--mode", choices=STOP_MODES, default="fast")
    commands.add_parser("status", parents=[data_dir], help="exit 0 if running, 3 if not")
    commands.add_parser(
        "env", parents=[data_dir], help="print the SENSORSTREAM_DATABASE_* exports for the sink"
    )
    commands.add_parser(
        "psql", parents=[data_dir], help="open psql as the sink user (extra args go to psql)"
    )
    return parser


HANDLERS = {
    "start": _cmd_start,
    "stop": _cmd_stop,
    "status": _cmd_status,
    "env": _cmd_env,
    "psql": _cmd_psql,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "psql":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = [arg for arg in extra if arg != "--"]
    try:
        return HANDLERS[args.command](args)
    except PgctlError as exc:
        print(f"pgctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
