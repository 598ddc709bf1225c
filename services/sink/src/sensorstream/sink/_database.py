"""The sink's PostgreSQL side: one connection, one transaction per batch, errors mapped once.

:class:`PostgresStore` holds a single asyncpg connection (the sink writes one batch at a
time, so a pool would only add connections). Per batch, in **one** transaction:

1. ``COPY`` (asyncpg's binary ``copy_records_to_table``) the batch's rows into
   temporary staging tables (``ON COMMIT DELETE ROWS``: empty again after every commit);
2. ``INSERT ... SELECT ... ON CONFLICT (identity) DO UPDATE ... WHERE <contents differ>``
   into ``aggregates`` and ``alerts``: an identical re-emission (an at-least-once replay)
   updates nothing, a different one replaces the stored row and bumps its ``revisions``;
3. record each partition's next offset in ``sink_offsets``.

Only after that commit does the service commit the same offsets to Kafka; a crash in
between replays the batch, which step 2 turns into no-ops.

Errors are mapped into the project's tree here and nowhere else
(:func:`translate_database_error`): an unreachable, restarting or lost server, a timeout
or a serialization conflict is a :class:`DatabaseUnavailableError` (retriable; the
connection is dropped and the next attempt reconnects), a refused password a
``SecurityError``, a missing database or privilege a ``ConfigError``, anything else a
``FatalError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import asyncpg
import structlog

from sensorstream.schema import (
    ConfigError,
    FatalError,
    RetriableError,
    SecurityError,
    SensorstreamError,
)

from ._batch import AGGREGATE_COLUMNS, ALERT_COLUMNS, Batch, Role
from ._metrics import ROLES, SinkMetrics
from ._schema import SchemaState, migrate
from .settings import SinkSettings, TimescaleMode

__all__ = [
    "DatabaseUnavailableError",
    "PostgresStore",
    "WriteResult",
    "database_errors",
    "translate_database_error",
    "upsert_sql",
]

log = structlog.get_logger("sensorstream.sink.database")

T = TypeVar("T")


class DatabaseUnavailableError(RetriableError):
    """The database cannot take the batch right now; reconnect and retry."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
        """One of ``DATABASE_ERROR_KINDS``: connection, timeout, conflict, other."""


# SQLSTATE classes and codes (PostgreSQL's errcodes): what each means for the sink.
_RETRIABLE_CLASSES: Final = {
    "08": "connection",  # connection exception
    "53": "connection",  # insufficient resources (too many connections, disk full)
    "57": "connection",  # operator intervention: shutting down, starting up
}
_RETRIABLE_CODES: Final = {
    "57014": "timeout",  # query_canceled (statement_timeout)
    "40001": "conflict",  # serialization_failure
    "40P01": "conflict",  # deadlock_detected
}


def translate_database_error(exc: BaseException, action: str) -> SensorstreamError:
    """Our exception for ``exc``, raised by asyncpg (or the socket) while ``action``."""
    detail = f"{action} failed: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        return DatabaseUnavailableError(detail, kind="timeout")
    if isinstance(exc, OSError):
        return DatabaseUnavailableError(detail, kind="connection")
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        if state in _RETRIABLE_CODES:
            return DatabaseUnavailableError(detail, kind=_RETRIABLE_CODES[state])
        if state[:2] in _RETRIABLE_CLASSES:
            return DatabaseUnavailableError(detail, kind=_RETRIABLE_CLASSES[state[:2]])
        if state.startswith("28"):
            return SecurityError(
                f"{detail}. Check --database-user / SENSORSTREAM_DATABASE_USER and "
                "--database-password-file / SENSORSTREAM_DATABASE_PASSWORD_FILE (or the URL)"
            )
        if state == "3D000":
            return ConfigError(
                f"{detail}. Create the database or set --database-name / "
                "SENSORSTREAM_DATABASE_NAME (or the URL's path)"
            )
        if state == "42501":
            return ConfigError(
                f"{detail}. The sink's user needs CREATE on the database (for the "
                "migrations) and INSERT/UPDATE on its tables"
            )
        return FatalError(detail)
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        # The client's own state: a connection closed under it. A fresh one fixes it.
        return DatabaseUnavailableError(detail, kind="connection")
    return FatalError(detail)


@contextlib.contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Run a block of asyncpg calls; re-raise their errors as ours (see module doc)."""
    try:
        yield
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise translate_database_error(exc, action) from exc
    except asyncpg.InternalClientError as exc:
        raise translate_database_error(exc, action) from exc


# --------------------------------------------------------------------------- the SQL

_STAGING: Final[Mapping[Role, str]] = {
    "aggregates": "sink_staging_aggregates",
    "alerts": "sink_staging_alerts",
}

_STAGING_DDL: Final = (
    """
    CREATE TEMPORARY TABLE IF NOT EXISTS sink_staging_aggregates (
        sensor_id text, window_start_ms bigint, window_end_ms bigint, count integer,
        temperature_min double precision, temperature_max double precision,
        temperature_mean double precision, humidity_min double precision,
        humidity_max double precision, humidity_mean double precision,
        first_seq bigint, last_seq bigint, kafka_partition integer, kafka_offset bigint
    ) ON COMMIT DELETE ROWS
    """,
    """
    CREATE TEMPORARY TABLE IF NOT EXISTS sink_staging_alerts (
        event_id text, kind text, sensor_id text, event_time_ms bigint,
        value double precision, threshold double precision,
        kafka_partition integer, kafka_offset bigint
    ) ON COMMIT DELETE ROWS
    """,
)


def _millis(column: str) -> str:
    # Integer arithmetic: exact to the millisecond, unlike to_timestamp(double).
    return f"(timestamptz 'epoch' + {column} * interval '1 millisecond')"


@dataclass(frozen=True, slots=True)
class _Table:
    """How one staging table's columns land in its target table."""

    target: str
    key: tuple[str, ...]
    """The identity: the conflict target."""
    order: tuple[str, ...]
    """Staging columns of the identity: rows go in in this order, so two sinks writing
    the same identities (a rebalance overlap) lock them in one order, not into a deadlock."""
    columns: tuple[tuple[str, str], ...]
    """(target column, expression over the staging columns), positions last."""
    positions: int = 2
    """The trailing columns that say where the row came from, not what it says."""


_TABLES: Final[Mapping[Role, _Table]] = {
    "aggregates": _Table(
        target="aggregates",
        key=("sensor_id", "window_start"),
        order=("sensor_id", "window_start_ms"),
        columns=(
            ("sensor_id", "sensor_id"),
            ("window_start", _millis("window_start_ms")),
            ("window_end", _millis("window_end_ms")),
            *((name, name) for name in AGGREGATE_COLUMNS[3:]),
        ),
    ),
    "alerts": _Table(
        target="alerts",
        key=("event_id", "kind"),
        order=("event_id", "kind"),
        columns=(
            ("event_id", "event_id::uuid"),
            ("kind", "kind"),
            ("sensor_id", "sensor_id"),
            ("event_time", _millis("event_time_ms")),
            *((name, name) for name in ALERT_COLUMNS[4:]),
        ),
    ),
}


def upsert_sql(role: Role) -> str:
    """The statement that moves ``role``'s staging rows into its table.

    Returns one row: ``inserted`` (new identities) and ``changed`` (identities stored
    with other contents, now replaced). Rows stored already with the same contents are
    neither: the ``WHERE`` of the ``DO UPDATE`` skips them, so a replay writes nothing.
    """
    table = _TABLES[role]
    targets = [name for name, _ in table.columns]
    contents = [name for name in targets[: -table.positions] if name not in table.key]
    assignments = ",\n            ".join(
        [f"{name} = EXCLUDED.{name}" for name in targets if name not in table.key]
        + ["revisions = t.revisions + 1", "written_at = now()"]
    )
    stored = ", ".join(f"t.{name}" for name in contents)
    incoming = ", ".join(f"EXCLUDED.{name}" for name in contents)
    order = ", ".join(table.order)
    # Built from the constant column lists above only: nothing from outside gets in.
    return f"""
    WITH written AS (
        INSERT INTO {table.target} AS t ({", ".join(targets)})
        SELECT {", ".join(expression for _, expression in table.columns)}
        FROM {_STAGING[role]}
        ORDER BY {order}
        ON CONFLICT ({", ".join(table.key)}) DO UPDATE SET
            {assignments}
        WHERE ({stored}) IS DISTINCT FROM ({incoming})
        RETURNING (t.xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted) AS inserted,
           count(*) FILTER (WHERE NOT inserted) AS changed
    FROM written
    """  # noqa: S608


_UPSERTS: Final[Mapping[Role, str]] = {role: upsert_sql(role) for role in ROLES}

_OFFSETS_SQL: Final = """
    INSERT INTO sink_offsets AS o (topic, partition, next_offset)
    SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[])
    ON CONFLICT (topic, partition) DO UPDATE SET
        next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset),
        updated_at = now()
"""

_COLUMNS: Final[Mapping[Role, tuple[str, ...]]] = {
    "aggregates": AGGREGATE_COLUMNS,
    "alerts": ALERT_COLUMNS,
}


@dataclass(slots=True)
class WriteResult:
    """What one batch did to the tables."""

    inserted: dict[Role, int] = field(default_factory=lambda: {"aggregates": 0, "alerts": 0})
    changed: dict[Role, int] = field(default_factory=lambda: {"aggregates": 0, "alerts": 0})
    identical: dict[Role, int] = field(default_factory=lambda: {"aggregates": 0, "alerts": 0})
    """Rows that were stored already with the same contents (nothing written)."""
    seconds: float = 0.0
    """The transaction's duration."""

    @property
    def rows(self) -> int:
        return sum(self.inserted.values()) + sum(self.changed.values())


# --------------------------------------------------------------------------- the store


class PostgresStore:
    """The sink's connection to PostgreSQL: connect, migrate, write batches.

    Not safe for concurrent use: one batch at a time (the service awaits each write).
    Every method raises our exceptions only (``DatabaseUnavailableError`` when a retry
    may help); after a retriable error the connection is gone and the next call makes a
    new one.
    """

    def __init__(
        self, settings: SinkSettings, metrics: SinkMetrics, *, topics: Mapping[Role, str]
    ) -> None:
        self._options = settings.connect_options()
        self._address = settings.database_address()
        self._metrics = metrics
        self._topics = dict(topics)
        self._conn: Any = None
        self.schema: SchemaState | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        """Open the connection (if there is none) and its staging tables."""
        if self.connected:
            return
        await self._drop()
        action = f"connecting to PostgreSQL at {self._address}"
        try:
            with database_errors(action):
                conn = await asyncpg.connect(**self._options)
        except DatabaseUnavailableError as exc:
            self._metrics.database_errors[exc.kind].inc()
            raise
        try:
            with database_errors("creating the staging tables"):
                for ddl in _STAGING_DDL:
                    await conn.execute(ddl)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._metrics.database_up.set(1)
        log.info("database_connected", database=self._address)

    async def migrate(self, mode: TimescaleMode) -> SchemaState:
        """Run the migrations (see ``_schema``) on this connection."""
        await self.connect()
        state = await self._guarded("migrating the schema", migrate(self._conn, mode))
        self.schema = state
        self._metrics.schema_version.labels(layout=state.layout).set(state.version)
        return state

    async def write(self, batch: Batch) -> WriteResult:
        """Write ``batch`` in one transaction: COPY, upserts, offsets; then commit."""
        await self.connect()
        return await self._guarded(f"writing a batch of {len(batch)} records", self._write(batch))

    async def _write(self, batch: Batch) -> WriteResult:
        conn = self._conn
        result = WriteResult()
        started = time.perf_counter()
        async with conn.transaction():
            for role in ROLES:
                rows = batch.rows(role)
                if not rows:
                    continue
                await conn.copy_records_to_table(
                    _STAGING[role], records=rows, columns=_COLUMNS[role]
                )
                counts = await conn.fetchrow(_UPSERTS[role])
                inserted, changed = int(counts["inserted"]), int(counts["changed"])
                result.inserted[role] = inserted
                result.changed[role] = changed
                result.identical[role] = len(rows) - inserted - changed
            if batch.offsets:
                where = list(batch.offsets.items())
                await conn.execute(
                    _OFFSETS_SQL,
                    [self._topics[role] for (role, _), _ in where],
                    [partition for (_, partition), _ in where],
                    [offset for _, offset in where],
                )
        result.seconds = time.perf_counter() - started
        return result

    async def _guarded(self, action: str, work: Awaitable[T]) -> T:
        """Await ``work``; on a failure drop the connection and raise our error."""
        try:
            with database_errors(action):
                return await work
        except DatabaseUnavailableError as exc:
            self._metrics.database_errors[exc.kind].inc()
            await self._drop()
            raise
        except asyncio.CancelledError:
            # Cancelled mid-transaction (shutdown): the connection's state is unknown.
            await self._drop()
            raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._metrics.database_up.set(0)
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self._metrics.database_up.set(0)
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()
