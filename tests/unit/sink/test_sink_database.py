"""Specification of the database boundary: the upsert statements and the error mapping."""

from __future__ import annotations

import re

import asyncpg
import pytest

from sensorstream.schema import ConfigError, FatalError, SecurityError
from sensorstream.sink._batch import AGGREGATE_COLUMNS, ALERT_COLUMNS
from sensorstream.sink._database import (
    DatabaseUnavailableError,
    translate_database_error,
    upsert_sql,
)


def _compared(sql: str) -> tuple[list[str], list[str]]:
    """The stored and the incoming columns the upsert's WHERE compares."""
    match = re.search(r"WHERE \((.*?)\) IS DISTINCT FROM \((.*?)\)", sql, re.S)
    assert match is not None
    stored = [c.strip().removeprefix("t.") for c in match.group(1).split(",")]
    incoming = [c.strip().removeprefix("EXCLUDED.") for c in match.group(2).split(",")]
    return stored, incoming


class TestUpsertSql:
    @pytest.mark.parametrize(
        ("role", "key"),
        [("aggregates", "(sensor_id, window_start)"), ("alerts", "(event_id, kind)")],
    )
    def test_conflict_target_is_the_identity(self, role: str, key: str) -> None:
        """A window is its sensor and start; an alert its reading and kind."""
        assert f"ON CONFLICT {key} DO UPDATE" in upsert_sql(role)  # type: ignore[arg-type]

    def test_only_contents_decide_a_change(self) -> None:
        """The WHERE compares every content column, and neither the identity nor where the
        row came from: an identical re-emission from another offset writes nothing."""
        stored, incoming = _compared(upsert_sql("aggregates"))
        contents = ["window_end", "count", "temperature_min", "temperature_max",
                    "temperature_mean", "humidity_min", "humidity_max", "humidity_mean",
                    "first_seq", "last_seq"]  # fmt: skip
        assert (contents, contents) == (stored, incoming)
        assert [] == [c for c in _compared(upsert_sql("alerts"))[0] if c.startswith("kafka_")]

    @pytest.mark.parametrize(
        ("role", "columns"), [("aggregates", AGGREGATE_COLUMNS), ("alerts", ALERT_COLUMNS)]
    )
    def test_reads_every_staging_column(self, role: str, columns: tuple[str, ...]) -> None:
        """Every column the batch COPYs is used by the upsert."""
        sql = upsert_sql(role)  # type: ignore[arg-type]
        assert [] == [c for c in columns if c not in sql]

    def test_times_are_exact_milliseconds(self) -> None:
        """Epoch milliseconds become timestamptz by integer interval arithmetic, not floats."""
        sql = upsert_sql("aggregates")
        assert "timestamptz 'epoch' + window_start_ms * interval '1 millisecond'" in sql
        assert "to_timestamp" not in sql

    def test_a_change_is_counted(self) -> None:
        """A replaced row bumps revisions; the statement reports inserted and changed."""
        sql = upsert_sql("alerts")
        assert "revisions = t.revisions + 1" in sql
        assert ("AS inserted", "AS changed") == tuple(
            w for w in ("AS inserted", "AS changed") if w in sql
        )


def _pg(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls("server said no")


class TestErrorMapping:
    @pytest.mark.parametrize(
        ("exc", "kind"),
        [
            (ConnectionRefusedError(111, "Connection refused"), "connection"),
            (TimeoutError(), "timeout"),
            (_pg(asyncpg.exceptions.CannotConnectNowError), "connection"),
            (_pg(asyncpg.exceptions.AdminShutdownError), "connection"),
            (_pg(asyncpg.exceptions.ConnectionDoesNotExistError), "connection"),
            (_pg(asyncpg.exceptions.TooManyConnectionsError), "connection"),
            (_pg(asyncpg.exceptions.QueryCanceledError), "timeout"),
            (_pg(asyncpg.exceptions.SerializationError), "conflict"),
            (_pg(asyncpg.exceptions.DeadlockDetectedError), "conflict"),
            (asyncpg.InterfaceError("connection is closed"), "connection"),
        ],
    )
    def test_retriable(self, exc: BaseException, kind: str) -> None:
        """Unreachable, restarting, lost, timed out or conflicting: retried, by kind."""
        ours = translate_database_error(exc, "writing a batch")
        assert (DatabaseUnavailableError, kind) == (type(ours), getattr(ours, "kind", None))

    @pytest.mark.parametrize(
        ("exc", "expected", "hint"),
        [
            (
                _pg(asyncpg.exceptions.InvalidPasswordError),
                SecurityError,
                "--database-password-file",
            ),
            (_pg(asyncpg.exceptions.InvalidCatalogNameError), ConfigError, "--database-name"),
            (_pg(asyncpg.exceptions.InsufficientPrivilegeError), ConfigError, "CREATE"),
            (_pg(asyncpg.exceptions.UndefinedTableError), FatalError, "UndefinedTableError"),
        ],
    )
    def test_not_retriable(self, exc: BaseException, expected: type, hint: str) -> None:
        """Wrong password, no such database, no privilege, a broken schema: exit with one line."""
        ours = translate_database_error(exc, "connecting")
        assert (expected, True) == (type(ours), hint in str(ours))
