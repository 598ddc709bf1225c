"""Specification of the migrations: listing, planning per layout, the layout choice.

The TimescaleDB variant cannot run here (Debian's PostgreSQL has no timescaledb), so
its SQL is checked as text: the plain variant runs for real in the integration tests.
"""

from __future__ import annotations

import re

import pytest

from sensorstream.schema import ConfigError
from sensorstream.sink._schema import (
    LAYOUTS,
    Migration,
    choose_layout,
    list_migrations,
    plan,
)


def _statements(sql: str) -> list[str]:
    """The SQL's statements, comments dropped, whitespace folded."""
    text = re.sub(r"--[^\n]*", "", sql)
    return [" ".join(part.split()) for part in text.split(";") if part.strip()]


def _view_columns(sql: str) -> list[str]:
    """The output column names of the aggregates_hourly definition in ``sql``."""
    view = next(
        s for s in _statements(sql) if re.match(r"CREATE (MATERIALIZED )?VIEW aggregates_hourly", s)
    )
    select = view[view.index(" SELECT ") + len(" SELECT ") : view.index(" FROM aggregates")]
    columns = []
    for item in re.split(r",(?![^(]*\))", select):
        alias = re.search(r"\bAS (\w+)$", item.strip())
        columns.append(alias.group(1) if alias else item.strip())
    return columns


class TestListing:
    def test_packaged_migrations_are_numbered_from_one(self) -> None:
        """The package ships 0001 for every layout and 0002 in both variants."""
        found = [(m.version, m.name, m.layout) for m in list_migrations()]
        assert [
            (1, "tables", None),
            (2, "time_layout", "plain"),
            (2, "time_layout", "timescaledb"),
        ] == found

    def test_names_must_follow_the_scheme(self) -> None:
        """A file not named NNNN_name[.layout].sql is refused, not skipped."""
        with pytest.raises(ValueError, match="NNNN_name"):
            list_migrations([("1_tables.sql", "")])

    def test_unknown_layout_is_refused(self) -> None:
        """A variant for a layout that does not exist is a typo, not a new layout."""
        with pytest.raises(ValueError, match="layout must be one of"):
            list_migrations([("0001_tables.mysql.sql", "")])

    def test_common_file_and_variants_exclude_each_other(self) -> None:
        """One version is either the same for all layouts or per layout, not both."""
        files = [("0001_a.sql", "x"), ("0001_a.plain.sql", "y")]
        with pytest.raises(ValueError, match="both a common file and variants"):
            list_migrations(files)

    def test_checksum_is_of_the_sql(self) -> None:
        """Same SQL, same checksum; one character more, another."""
        a, b, c = (
            Migration(1, "t", sql)
            for sql in ("CREATE TABLE t ()", "CREATE TABLE t ()", "CREATE TABLE t ( )")
        )
        assert (True, False) == (a.checksum == b.checksum, a.checksum == c.checksum)


class TestPlan:
    @pytest.mark.parametrize("layout", LAYOUTS)
    def test_one_step_per_version(self, layout: str) -> None:
        """Each layout gets every version once, in order, its own variant where there is one."""
        steps = plan(list_migrations(), layout)  # type: ignore[arg-type]
        assert [(1, None), (2, layout)] == [(s.version, s.layout) for s in steps]

    def test_gap_is_refused(self) -> None:
        """Versions 1 and 3 without 2: a lost file, refused."""
        migrations = list_migrations([("0001_a.sql", "x"), ("0003_c.sql", "z")])
        with pytest.raises(ValueError, match="without gaps"):
            plan(migrations, "plain")

    def test_missing_variant_is_refused(self) -> None:
        """A layout-dependent step without this layout's variant cannot be planned."""
        migrations = list_migrations([("0001_a.sql", "x"), ("0002_b.timescaledb.sql", "y")])
        with pytest.raises(ValueError, match="no variant for layout 'plain'"):
            plan(migrations, "plain")


class TestTimescaleVariant:
    SQL = next(m.sql for m in list_migrations() if m.layout == "timescaledb")

    def test_creates_the_extension_first(self) -> None:
        """The extension is created before anything uses it."""
        assert "CREATE EXTENSION IF NOT EXISTS timescaledb" == _statements(self.SQL)[0]

    def test_aggregates_is_a_hypertable_on_window_start(self) -> None:
        """create_hypertable on aggregates, partitioned by window_start, daily chunks."""
        call = next(s for s in _statements(self.SQL) if "create_hypertable" in s)
        assert "create_hypertable( 'aggregates', 'window_start'," in call
        assert "chunk_time_interval => INTERVAL '1 day'" in call

    def test_hourly_continuous_aggregate_fits_in_a_transaction(self) -> None:
        """The continuous aggregate is created WITH NO DATA (allowed in a transaction) on
        hourly time buckets, and a refresh policy fills it."""
        statements = _statements(self.SQL)
        view = next(s for s in statements if s.startswith("CREATE MATERIALIZED VIEW"))
        assert "WITH (timescaledb.continuous)" in view
        assert "time_bucket(INTERVAL '1 hour', window_start)" in view
        assert view.endswith("WITH NO DATA")
        assert any(
            s.startswith("SELECT add_continuous_aggregate_policy( 'aggregates_hourly'")
            for s in statements
        )

    def test_same_view_columns_as_the_plain_variant(self) -> None:
        """Dashboards query aggregates_hourly on either layout: the columns are the same."""
        plain = next(m.sql for m in list_migrations() if m.layout == "plain")
        stats = [f"{m}_{s}" for m in ("temperature", "humidity") for s in ("min", "max", "mean")]
        expected = ["sensor_id", "bucket", "readings", *stats]
        assert (expected, expected) == (_view_columns(plain), _view_columns(self.SQL))

    def test_plain_variant_uses_no_timescaledb(self) -> None:
        """The plain variant calls none of TimescaleDB's functions."""
        plain = " ".join(_statements(next(m.sql for m in list_migrations() if m.layout == "plain")))
        used = [
            word for word in ("timescaledb", "hypertable", "time_bucket") if word in plain.lower()
        ]
        assert [] == used


class TestChooseLayout:
    @pytest.mark.parametrize(
        ("mode", "available", "recorded", "layout"),
        [
            ("auto", True, None, "timescaledb"),
            ("auto", False, None, "plain"),
            ("off", True, None, "plain"),
            ("on", True, None, "timescaledb"),
            ("auto", True, "plain", "plain"),
            ("auto", False, "timescaledb", "timescaledb"),
            ("off", True, "timescaledb", "timescaledb"),
        ],
    )
    def test_choice(self, mode: str, available: bool, recorded: str | None, layout: str) -> None:
        """An empty database follows the mode and the server; a migrated one keeps its layout."""
        chosen, _ = choose_layout(mode, available=available, recorded=recorded)  # type: ignore[arg-type]
        assert layout == chosen

    @pytest.mark.parametrize(("available", "recorded"), [(False, None), (True, "plain")])
    def test_on_without_timescaledb_is_a_config_error(
        self, available: bool, recorded: str | None
    ) -> None:
        """--timescaledb on with no usable extension, or a plain schema, says what to do."""
        with pytest.raises(ConfigError, match="--timescaledb"):
            choose_layout("on", available=available, recorded=recorded)  # type: ignore[arg-type]
