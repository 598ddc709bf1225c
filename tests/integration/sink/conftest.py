"""Fixtures of the sink's tests: a real PostgreSQL server, started by the session.

- ``postgres`` (session): one server from ``deploy/postgres/pgctl.py`` (the same code as
  ``deploy/postgres/pgctl start``) on a free loopback port, stopped and removed when the
  session ends, also after a failure or Ctrl-C.
- ``sink_db`` (function): a fresh database of its own on that server, owned by the
  sink's user, so each test starts from an empty schema; dropped afterwards.
- ``outage_postgres`` (function): a server of the test's own, to stop and start
  (``.stop_async()``, ``.start_async()``) while a sink runs; its port lies below the
  ephemeral range, so no client connection can take it while it is down.
- ``pipeline_run`` (session): the real pipeline run once, readings -> processor -> sink
  -> PostgreSQL, for the tests that only look at what it left (the end-to-end test,
  the replay test and the Grafana panels).

The data dirs live under ``/tmp`` in a directory of mode 0755 rather than pytest's tmp
dir: run as root, the server runs as the ``postgres`` user, which cannot enter
``/tmp/pytest-of-root`` (mode 0700). The Kafka fixtures come from ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "processor"))
sys.path.insert(0, str(HERE.parents[2] / "deploy" / "postgres"))

import pgctl  # noqa: E402
from sink_support import PipelineRun, SinkDatabase, run_pipeline  # noqa: E402

START_ATTEMPTS = 2


def _scratch_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # the server's own user must be able to enter it
    return base


def _teardown(base: Path) -> None:
    with contextlib.suppress(pgctl.PgctlError):
        pgctl.stop(base / "pg", mode="immediate")
    shutil.rmtree(base, ignore_errors=True)


def _start_server(base: Path) -> pgctl.PostgresServer:
    """A server in ``base/pg`` on a stable free port; a port taken meanwhile is retried."""
    for attempt in range(START_ATTEMPTS):
        try:
            return pgctl.start(base / "pg", port=pgctl.stable_free_port())
        except pgctl.PgctlError:
            if attempt == START_ATTEMPTS - 1:
                raise
            shutil.rmtree(base / "pg", ignore_errors=True)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgctl.PostgresServer]:
    """A real PostgreSQL server for the whole session."""
    base = _scratch_dir("sensorstream-pg-")
    atexit.register(_teardown, base)  # if the session dies before the finally below
    try:
        try:
            server = _start_server(base)
        except pgctl.PgctlError as exc:
            pytest.exit(f"could not start the test PostgreSQL: {exc}", returncode=1)
        yield server
    finally:
        _teardown(base)


class OutagePostgres:
    """A test's own PostgreSQL server, to take down and bring back."""

    def __init__(self, server: pgctl.PostgresServer) -> None:
        self.server = server

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: open transactions roll back, clients are cut off."""
        pgctl.stop(Path(self.server.data_dir), mode="fast")

    def start(self) -> None:
        """Back on the same port and data; returns once it answers."""
        pgctl.start(Path(self.server.data_dir))

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    async def start_async(self) -> None:
        await asyncio.to_thread(self.start)


@pytest.fixture
def outage_postgres() -> Iterator[OutagePostgres]:
    """A PostgreSQL server of this test's own (see ``OutagePostgres``)."""
    base = _scratch_dir("sensorstream-pg-outage-")
    atexit.register(_teardown, base)
    try:
        yield OutagePostgres(_start_server(base))
    finally:
        _teardown(base)


async def _superuser(server: pgctl.PostgresServer) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=pgctl.SUPERUSER,
        password=server.superuser_password,
        database="postgres",
    )


@contextlib.asynccontextmanager
async def fresh_database(server: pgctl.PostgresServer) -> AsyncIterator[SinkDatabase]:
    """A new, empty database owned by the sink's user; dropped on exit."""
    name = f"sink_{uuid.uuid4().hex[:12]}"
    admin = await _superuser(server)
    try:
        await admin.execute(f"CREATE DATABASE {name} OWNER {server.user}")
    finally:
        await admin.close()
    try:
        yield SinkDatabase(server, name)
    finally:
        admin = await _superuser(server)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def sink_db(postgres: pgctl.PostgresServer) -> AsyncIterator[SinkDatabase]:
    """An empty database of this test's own on the session's server."""
    async with fresh_database(postgres) as db:
        yield db


@pytest.fixture(scope="session")
async def pipeline_run(
    kafka_bootstrap: str,
    postgres: pgctl.PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[PipelineRun]:
    """Readings -> processor -> sink -> PostgreSQL, once; see ``run_pipeline``."""
    async with fresh_database(postgres) as db:
        yield await run_pipeline(kafka_bootstrap, db, tmp_path_factory.mktemp("pipeline"))
