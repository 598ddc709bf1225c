"""Specification of the shared settings plumbing (sensorstream.runtime.settings)."""

from __future__ import annotations

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
