"""Specification of the shared settings plumbing (sensorstream.runtime.settings)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field, SecretStr

from sensorstream.runtime import EXIT_BAD_SETTING, ServiceSettings, load_settings
from sensorstream.runtime.settings import parse_bootstrap_servers


class ExampleSettings(ServiceSettings):
    service_name: ClassVar[str] = "sensorstream-example"

    rate: float = Field(100.0, gt=0, description="Events per second.")


class TestParseBootstrapServers:
    def test_accepts_names_addresses_and_lists(self) -> None:
        """Host names, IPv4, bracketed IPv6 and comma lists are all host:port."""
        assert ["kafka:9092", "127.0.0.1:9093", "[::1]:9094"] == parse_bootstrap_servers(
            "kafka:9092, 127.0.0.1:9093,[::1]:9094"
        )

    @pytest.mark.parametrize("value", ["", "kafka", "kafka:", "kafka:0", "kafka:99999", "a b:1"])
    def test_rejects_malformed(self, value: str) -> None:
        """Anything that is not host:port with a valid port is refused."""
        with pytest.raises(ValueError, match="host:port"):
            parse_bootstrap_servers(value)


class TestLoadSettings:
    def test_cli_beats_environment_beats_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A flag overrides SENSORSTREAM_<NAME>, which overrides the default."""
        monkeypatch.setenv("SENSORSTREAM_RATE", "5")
        monkeypatch.setenv("SENSORSTREAM_LOG_LEVEL", "debug")

        settings = load_settings(ExampleSettings, ["--rate", "7"])

        assert (7.0, "debug", 8000) == (settings.rate, settings.log_level, settings.metrics_port)

    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--rate", "-1"], "--rate / SENSORSTREAM_RATE"),
            (
                ["--bootstrap-servers", "nohost"],
                "--bootstrap-servers / SENSORSTREAM_BOOTSTRAP_SERVERS",
            ),
            (["--log-format", "xml"], "--log-format / SENSORSTREAM_LOG_FORMAT"),
            (["--metrics-port", "70000"], "--metrics-port / SENSORSTREAM_METRICS_PORT"),
        ],
    )
    def test_bad_value_exits_2_with_one_line_naming_it(
        self, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad value exits 2 with a single stderr line naming flag and variable."""
        with pytest.raises(SystemExit) as exc_info:
            load_settings(ExampleSettings, argv)

        err = capsys.readouterr().err
        assert EXIT_BAD_SETTING == exc_info.value.code
        assert 1 == len(err.strip().splitlines())
        assert named in err
        assert err.startswith("sensorstream-example: error: ")

    def test_bad_environment_value_is_named(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad variable is reported the same way as a bad flag."""
        monkeypatch.setenv("SENSORSTREAM_RATE", "fast")

        with pytest.raises(SystemExit):
            load_settings(ExampleSettings, [])

        assert "SENSORSTREAM_RATE (got 'fast')" in capsys.readouterr().err

    def test_unknown_flag_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown flag is one line that points at --help."""
        with pytest.raises(SystemExit) as exc_info:
            load_settings(ExampleSettings, ["--no-such-flag"])

        assert EXIT_BAD_SETTING == exc_info.value.code
        assert "--help" in capsys.readouterr().err

    def test_help_names_every_environment_variable(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help lists each flag with its SENSORSTREAM_ variable."""
        with pytest.raises(SystemExit) as exc_info:
            load_settings(ExampleSettings, ["--help"])

        out = " ".join(capsys.readouterr().out.split())
        assert 0 == exc_info.value.code
        for name in ExampleSettings.model_fields:
            assert f"SENSORSTREAM_{name.upper()}" in out.replace("SENSORSTREAM_ ", "SENSORSTREAM_")


class TestPublicDict:
    def test_masks_secrets(self) -> None:
        """The start-up view of the settings never shows a password."""
        settings = ExampleSettings(sasl_password=SecretStr("hunter2"))

        assert "hunter2" not in repr(settings.public_dict())
        assert "**********" == settings.public_dict()["sasl_password"]


def _bad_setting(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a refused setting (exit 2)."""
    with pytest.raises(SystemExit) as exc_info:
        load_settings(ExampleSettings, argv)
    err = capsys.readouterr().err
    assert (EXIT_BAD_SETTING, 1) == (exc_info.value.code, len(err.strip().splitlines()))
    return err


class TestSecretsFromFiles:
    def test_password_file_fills_the_secret_without_its_newline(self, tmp_path: Path) -> None:
        """--sasl-password-file: the file's text, one trailing newline dropped (as `echo`
        and editors leave it), becomes the password; the path stays visible."""
        secret = tmp_path / "sasl"
        secret.write_text("s3cret with spaces\n")

        settings = load_settings(ExampleSettings, ["--sasl-password-file", str(secret)])

        assert settings.sasl_password is not None
        assert ("s3cret with spaces", str(secret), "**********") == (
            settings.sasl_password.get_secret_value(),
            settings.public_dict()["sasl_password_file"],
            settings.public_dict()["sasl_password"],
        )

    def test_every_secret_has_a_file_form_read_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The Docker/Kubernetes convention: SENSORSTREAM_<SECRET>_FILE for each secret."""
        for name in ("sasl_password", "ssl_key_password", "metrics_auth_password"):
            path = tmp_path / name
            path.write_text(f"{name}-value")
            monkeypatch.setenv(f"SENSORSTREAM_{name.upper()}_FILE", str(path))
        monkeypatch.setenv("SENSORSTREAM_METRICS_AUTH_USERNAME", "prometheus")

        settings = load_settings(ExampleSettings, [])

        assert [
            "sasl_password-value",
            "ssl_key_password-value",
            "metrics_auth_password-value",
        ] == settings.secret_values()

    def test_secret_and_its_file_together_are_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Both forms at once is ambiguous: one line naming both, and no secret shown."""
        secret = tmp_path / "sasl"
        secret.write_text("from-file")

        err = _bad_setting(
            ["--sasl-password", "on-the-line", "--sasl-password-file", str(secret)], capsys
        )

        assert "--sasl-password / SENSORSTREAM_SASL_PASSWORD or --sasl-password-file" in err
        assert ("on-the-line", "from-file") == tuple(
            s for s in ("on-the-line", "from-file") if s not in err
        )

    @pytest.mark.parametrize(
        ("content", "why"), [(None, "cannot read it"), ("", "the file is empty"), ("\n", "empty")]
    )
    def test_unusable_file_names_the_variable(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        content: str | None,
        why: str,
    ) -> None:
        """A missing or empty secrets file: exit 2 naming the flag and variable."""
        path = tmp_path / "missing"
        if content is not None:
            path.write_text(content)

        err = _bad_setting(["--sasl-password-file", str(path)], capsys)

        assert "--sasl-password-file / SENSORSTREAM_SASL_PASSWORD_FILE" in err
        assert why in err

    def test_model_validate_reads_the_file_too(self, tmp_path: Path) -> None:
        """Built from a mapping (as tests and tools do), not only from flags."""
        secret = tmp_path / "sasl"
        secret.write_text("from-file\n")

        settings = ExampleSettings.model_validate({"sasl_password_file": str(secret)})

        assert ["from-file"] == settings.secret_values()

    def test_secret_values_lists_only_what_is_set(self) -> None:
        assert ["pw"] == ExampleSettings(sasl_password=SecretStr("pw")).secret_values()
        assert [] == ExampleSettings().secret_values()


class TestSettingsThatComeInPairs:
    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--security-protocol", "SSL", "--ssl-certfile", "{f}"], "--ssl-keyfile"),
            (["--security-protocol", "SSL", "--ssl-keyfile", "{f}"], "--ssl-certfile"),
            (["--metrics-tls-certfile", "{f}"], "--metrics-tls-keyfile"),
            (["--metrics-auth-username", "prom"], "--metrics-auth-password"),
            (["--ssl-certfile", "{f}", "--ssl-keyfile", "{f}"], "--security-protocol"),
            (["--ssl-cafile", "{f}"], "SSL or SASL_SSL"),
        ],
    )
    def test_half_a_pair_is_refused(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        argv: list[str],
        named: str,
    ) -> None:
        """A certificate without its key, a user without a password, TLS files for a
        plaintext connection: one line naming what is missing."""
        existing = tmp_path / "file.pem"
        existing.write_text("x")

        err = _bad_setting([a.format(f=existing) for a in argv], capsys)

        assert named in err
        assert "invalid settings: " in err

    def test_certificate_file_must_exist(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        err = _bad_setting(
            ["--security-protocol", "SSL", "--ssl-cafile", str(tmp_path / "nope.pem")], capsys
        )
        assert "--ssl-cafile / SENSORSTREAM_SSL_CAFILE" in err
