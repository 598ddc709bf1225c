"""Specification of the sink's settings: defaults, the database's URL or parts, secrets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sensorstream.runtime import load_settings
from sensorstream.schema import AGGREGATES_TOPIC, ALERTS_TOPIC
from sensorstream.sink.settings import SinkSettings


def _exit_message(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        load_settings(SinkSettings, argv)
    assert 2 == raised.value.code
    return capsys.readouterr().err


class TestDefaults:
    def test_defaults_match_the_contract(self) -> None:
        """The topology's topics, group sensorstream-sink, batches of 5000 or 1 s, port 8004."""
        settings = load_settings(SinkSettings, [])
        expected = (AGGREGATES_TOPIC, ALERTS_TOPIC, "sensorstream-sink", 5000, 1.0, 8004)
        actual = (
            settings.aggregates_topic,
            settings.alerts_topic,
            settings.group_id,
            settings.batch_size,
            settings.batch_time,
            settings.metrics_port,
        )
        assert expected == actual

    def test_database_defaults(self) -> None:
        """Local database sensorstream as user sensorstream; an outage is waited out."""
        settings = load_settings(SinkSettings, [])
        assert ("127.0.0.1:5432/sensorstream", "auto", math.inf) == (
            settings.database_address(),
            settings.timescaledb,
            settings.database_retry_budget,
        )

    def test_every_field_is_described(self) -> None:
        """--help documents every setting with its environment variable."""
        undocumented = [
            name
            for name, field in SinkSettings.model_fields.items()
            if not field.description or "SENSORSTREAM_" not in field.description
        ]
        assert [] == undocumented


class TestDatabasePassword:
    def test_password_file_is_read(self, tmp_path: Path) -> None:
        """--database-password-file gives the password, without its trailing newline."""
        secret = tmp_path / "pw"
        secret.write_text("s3cret\n")
        settings = load_settings(SinkSettings, ["--database-password-file", str(secret)])
        assert settings.database_password is not None
        assert "s3cret" == settings.database_password.get_secret_value()
        assert "s3cret" == settings.connect_options()["password"]

    def test_password_and_file_exclude_each_other(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Both a password and a file with another one: exit 2 naming both, quoting neither."""
        secret = tmp_path / "pw"
        secret.write_text("from-file")
        err = _exit_message(
            capsys,
            ["--database-password", "from-flag", "--database-password-file", str(secret)],
        )
        assert "--database-password-file" in err
        assert "from-flag" not in err
        assert "from-file" not in err

    def test_unreadable_file_names_the_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A password file that does not exist: exit 2 naming the flag and its variable."""
        err = _exit_message(capsys, ["--database-password-file", "/nonexistent/pw"])
        assert "--database-password-file / SENSORSTREAM_DATABASE_PASSWORD_FILE" in err

    def test_secrets_are_handed_to_the_redaction(self, tmp_path: Path) -> None:
        """The password and the URL (and the URL's password) are masked in every log line."""
        settings = load_settings(
            SinkSettings,
            ["--database-url", "postgresql://u:p%40ss@db:5433/x", "--database-password", "pw2"],
        )
        secrets = settings.secret_values()
        assert {"pw2", "postgresql://u:p%40ss@db:5433/x", "p%40ss", "p@ss"} <= set(secrets)
        assert "**********" == settings.public_dict()["database_url"]


class TestDatabaseUrl:
    def test_url_replaces_the_parts(self) -> None:
        """With --database-url the connection uses it as the DSN and not the parts."""
        settings = load_settings(SinkSettings, ["--database-url", "postgresql://u:p@db:5433/x"])
        options = settings.connect_options()
        assert ("postgresql://u:p@db:5433/x", "host" in options) == (options["dsn"], False)
        assert "db:5433/x" == settings.database_address()

    def test_parts_without_url(self) -> None:
        """Without a URL the host, port, user and database go to asyncpg one by one."""
        settings = load_settings(
            SinkSettings,
            ["--database-host", "pg", "--database-port", "6543", "--database-name", "telemetry"],
        )
        options = settings.connect_options()
        actual = tuple(options[key] for key in ("host", "port", "user", "database"))
        assert ("pg", 6543, "sensorstream", "telemetry") == actual

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("mysql://u:hunter2@db/x", "must start with postgresql://"),
            ("postgresql://u:hunter2@:99999999/x", "is not a valid URL"),
            ("postgresql:///x?password=hunter2", "names no host"),
        ],
    )
    def test_bad_url_is_refused_without_quoting_it(
        self, url: str, problem: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad URL exits 2 saying what is wrong, never echoing it (it may hold a password)."""
        err = _exit_message(capsys, ["--database-url", url])
        assert (True, False) == (problem in err, "hunter2" in err)


class TestTls:
    def test_rootcert_needs_a_verifying_mode(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A CA file with --database-sslmode prefer would be ignored: refused instead."""
        ca = tmp_path / "ca.pem"
        ca.write_text("not used")
        err = _exit_message(capsys, ["--database-sslrootcert", str(ca)])
        assert "verify-ca or verify-full" in err

    def test_sslmode_goes_to_asyncpg(self) -> None:
        """Without a CA file the mode is passed as asyncpg's ssl argument."""
        settings = load_settings(SinkSettings, ["--database-sslmode", "require"])
        assert "require" == settings.connect_options()["ssl"]


class TestCrossChecks:
    def test_heartbeat_below_session_timeout(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A heartbeat interval not below the session timeout is refused."""
        err = _exit_message(capsys, ["--session-timeout", "3", "--heartbeat-interval", "3"])
        assert "--heartbeat-interval" in err
