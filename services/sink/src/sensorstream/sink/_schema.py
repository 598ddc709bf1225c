"""The sink's database schema: versioned migrations, run at start-up.

Migrations are the numbered SQL files in ``migrations/`` beside this module,
``NNNN_name.sql``; a step whose SQL depends on the server comes as variants,
``NNNN_name.<layout>.sql``, one per :data:`Layout` (``plain``, ``timescaledb``). Each
applied step is a row of ``schema_migrations`` (version, name, layout, checksum), written
in the same transaction as the step's SQL, so a step is applied completely or not at all.

Rules for whoever adds a migration: take the next number, never edit or renumber one
that has been released (start-up refuses a database whose recorded checksum differs
from the file: the schema would no longer be what the code expects), and give a
layout-dependent step both variants.

Which layout: the first start on an empty database decides, from the server
(:func:`detect_timescaledb`) and ``--timescaledb`` (auto/on/off); every later start
keeps the layout recorded in ``schema_migrations``, even if TimescaleDB has appeared
since (moving existing tables to a hypertable is a migration of its own). The
``schema_ready`` log line says which layout and why.

Concurrent sinks: :func:`migrate` holds a session-level ``pg_advisory_lock`` for the
whole run, so a second sink starting at the same moment waits, then finds every step
applied and does nothing.

The pure part (listing, planning, checksums) never talks to the database; the unit
tests check it with plain values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal, get_args

import asyncpg
import structlog

from sensorstream.schema import ConfigError, FatalError

from .settings import TimescaleMode

__all__ = [
    "ADVISORY_LOCK_KEY",
    "LAYOUTS",
    "Layout",
    "Migration",
    "SchemaState",
    "choose_layout",
    "detect_timescaledb",
    "list_migrations",
    "migrate",
    "plan",
]

log = structlog.get_logger("sensorstream.sink.schema")

Layout = Literal["plain", "timescaledb"]
LAYOUTS: Final[tuple[Layout, ...]] = get_args(Layout)

# An arbitrary constant of our own for pg_advisory_lock: every sink takes the same one
# (the bytes of "sensorsk" read as a signed 64-bit integer).
ADVISORY_LOCK_KEY: Final = int.from_bytes(b"sensorsk", "big", signed=True)

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<layout>[a-z]+))?\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    layout     text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema, in the variant for one layout (or for all)."""

    version: int
    name: str
    sql: str
    layout: Layout | None = None
    """The layout this variant is for; None: the same SQL for every layout."""

    @property
    def checksum(self) -> str:
        """SHA-256 of the SQL: start-up compares it with the one recorded."""
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What :func:`migrate` left: the version, the layout and what this run applied."""

    version: int
    layout: Layout
    applied: tuple[str, ...]
    """Labels of the steps this run applied (empty: the schema was up to date)."""


def list_migrations(files: Iterable[tuple[str, str]] | None = None) -> list[Migration]:
    """Every migration variant, ordered by version (then layout).

    ``files`` are ``(file name, SQL)`` pairs; default: the packaged ``migrations/``.
    Raises ``ValueError`` for a file name that does not follow the scheme, a layout
    that does not exist, or a version with both a common file and variants.
    """
    if files is None:
        files = _packaged_files()
    found: list[Migration] = []
    for filename, sql in files:
        match = _FILE.match(filename)
        if match is None:
            raise ValueError(f"migration file {filename!r} is not NNNN_name[.layout].sql")
        layout = match["layout"]
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"migration file {filename!r}: layout must be one of {LAYOUTS}")
        found.append(
            Migration(
                version=int(match["version"]),
                name=match["name"],
                sql=sql,
                layout=layout,
            )
        )
    found.sort(key=lambda m: (m.version, m.layout or ""))
    by_version: dict[int, list[Migration]] = {}
    for migration in found:
        by_version.setdefault(migration.version, []).append(migration)
    for version, variants in by_version.items():
        names = {m.name for m in variants}
        if len(names) > 1:
            raise ValueError(f"migration {version:04d} has several names: {sorted(names)}")
        common = [m for m in variants if m.layout is None]
        if common and len(variants) > 1:
            raise ValueError(f"migration {version:04d} has both a common file and variants")
    return found


def plan(migrations: Sequence[Migration], layout: Layout) -> list[Migration]:
    """The steps for ``layout``, one per version, in order.

    Raises ``ValueError`` when a layout-dependent version lacks the variant for ``layout``
    or when the versions are not 1, 2, 3, ... without a gap.
    """
    steps: dict[int, Migration] = {}
    variants: dict[int, set[str]] = {}
    for migration in migrations:
        if migration.layout is None or migration.layout == layout:
            steps[migration.version] = migration
        variants.setdefault(migration.version, set()).add(migration.layout or "all")
    missing = [v for v in variants if v not in steps]
    if missing:
        raise ValueError(f"migration {missing[0]:04d} has no variant for layout {layout!r}")
    versions = sorted(steps)
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3, ... without gaps: {versions}")
    return [steps[v] for v in versions]


def choose_layout(
    mode: TimescaleMode, *, available: bool, recorded: Layout | None
) -> tuple[Layout, str]:
    """The layout to migrate with, and why (for the start-up log line).

    ``recorded`` is the layout of the steps applied already (None: an empty database),
    ``available`` whether the server can run TimescaleDB. Raises ``ConfigError`` when
    ``--timescaledb on`` cannot be honoured.
    """
    if recorded is not None:
        if mode == "on" and recorded != "timescaledb":
            raise ConfigError(
                "--timescaledb / SENSORSTREAM_TIMESCALEDB is on, but this database's schema "
                "was created with plain tables; migrate it to a hypertable by hand or set "
                "--timescaledb auto"
            )
        return recorded, "recorded in schema_migrations"
    if mode == "off":
        return "plain", "--timescaledb off"
    if available:
        return "timescaledb", "the timescaledb extension is available"
    if mode == "on":
        raise ConfigError(
            "--timescaledb / SENSORSTREAM_TIMESCALEDB is on, but the server has no usable "
            "timescaledb extension (not in pg_available_extensions, or not in "
            "shared_preload_libraries); install and preload it, or set --timescaledb auto"
        )
    return "plain", "the timescaledb extension is not available"


def _packaged_files() -> list[tuple[str, str]]:
    folder = resources.files(__package__).joinpath("migrations")
    return [
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]


# ----------------------------------------------------------------------- on the database


async def detect_timescaledb(conn: Any) -> tuple[bool, str]:
    """Whether TimescaleDB can be used here, and why (or why not).

    Usable when the extension is installed in this database, or when the server has it
    (``pg_available_extensions``) and ``CREATE EXTENSION`` works for this user: it needs
    the library preloaded (``shared_preload_libraries``, which an ordinary user may not
    even read) and the right to create it, so trying is the one reliable test. A failed
    try is rolled back and leaves nothing behind.
    """
    row = await conn.fetchrow(
        """
        SELECT
            EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
                AS available,
            EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS installed
        """
    )
    if row["installed"]:
        return True, "the timescaledb extension is installed"
    if not row["available"]:
        return False, "the server has no timescaledb extension (pg_available_extensions)"
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        return False, f"CREATE EXTENSION timescaledb failed: {exc}"
    return True, "the timescaledb extension was created"


async def migrate(
    conn: Any, mode: TimescaleMode, *, migrations: Sequence[Migration] | None = None
) -> SchemaState:
    """Bring the schema up to date under the advisory lock; see the module docstring.

    Raises ``FatalError`` when an applied step's checksum differs from its file (or the
    database is newer than this sink), ``ConfigError`` for ``--timescaledb on`` on a
    server without it. Database errors propagate as asyncpg raises them; the caller
    translates them.
    """
    known = list_migrations() if migrations is None else list(migrations)
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch(
            "SELECT version, name, layout, checksum FROM schema_migrations ORDER BY version"
        )
        recorded_layout: Layout | None = rows[0]["layout"] if rows else None
        if recorded_layout is None and mode != "off":
            available, found = await detect_timescaledb(conn)
        else:
            available, found = False, "not looked for"
        layout, reason = choose_layout(mode, available=available, recorded=recorded_layout)
        steps = plan(known, layout)
        _check_applied(rows, steps)
        done = {row["version"] for row in rows}
        applied = []
        for step in steps:
            if step.version in done:
                continue
            async with conn.transaction():
                await conn.execute(step.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, layout, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    step.version,
                    step.name,
                    layout,
                    step.checksum,
                )
            # "version" is the service's own in every log line: name the migration instead.
            log.info("migration_applied", migration=step.label, layout=layout)
            applied.append(step.label)
        version = steps[-1].version if steps else 0
        log.info(
            "schema_ready",
            schema_version=version,
            layout=layout,
            layout_reason=reason,
            timescaledb=found,
            applied=len(applied),
        )
        return SchemaState(version=version, layout=layout, applied=tuple(applied))
    finally:
        await _unlock(conn)


async def _unlock(conn: Any) -> None:
    """Release the advisory lock; a lost connection has released it already."""
    if conn.is_closed():
        return
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    except Exception:  # the error that got us here matters more; the session ends anyway
        log.debug("advisory_unlock_failed", exc_info=True)


def _check_applied(rows: Sequence[Any], steps: Sequence[Migration]) -> None:
    by_version = {step.version: step for step in steps}
    for row in rows:
        step = by_version.get(row["version"])
        if step is None:
            raise FatalError(
                f"the database's schema is at migration {row['version']:04d} "
                f"({row['name']}), newer than this sink knows ({len(steps):04d}); run a "
                "sink at least as new as the one that migrated it"
            )
        if row["checksum"] != step.checksum:
            raise FatalError(
                f"migration {step.label} was applied with other contents than this sink's "
                "file; an applied migration must never change (add a new one instead)"
            )
