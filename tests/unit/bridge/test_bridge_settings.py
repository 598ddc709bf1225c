"""Bridge and simulator settings: defaults, the MQTT password's file, topic filters, and
one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensorstream.bridge import BridgeSettings, DevicesSettings
from sensorstream.bridge.settings import check_topic_filter
from sensorstream.producer._simulation import SensorFleet
from sensorstream.runtime import load_settings
from sensorstream.schema._constants import is_sensor_id


def _load(*argv: str) -> BridgeSettings:
    return load_settings(BridgeSettings, list(argv))


class TestDefaults:
    def test_defaults(self) -> None:
        """sensors/+/readings into sensor-data, a fixed client id, MQTT 3.1.1, 5,000 in flight."""
        settings = _load()
        assert (
            "sensors/+/readings",
            "sensor-data",
            "sensor-data.dlq",
            "sensorstream-mqtt-bridge",
            "3.1.1",
            5_000,
        ) == (
            settings.mqtt_topic,
            settings.topic,
            settings.dlq_topic,
            settings.mqtt_client_id,
            settings.mqtt_protocol,
            settings.max_in_flight,
        )

    def test_env_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """SENSORSTREAM_MQTT_* set the MQTT side; a flag wins over its variable."""
        monkeypatch.setenv("SENSORSTREAM_MQTT_HOST", "mqtt.example")
        monkeypatch.setenv("SENSORSTREAM_MQTT_PORT", "8883")
        settings = _load("--mqtt-port", "1884")
        assert ("mqtt.example", 1884, "mqtt.example:1884") == (
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_address,
        )


class TestPassword:
    def test_from_a_file_without_its_newline(self, tmp_path: Path) -> None:
        """--mqtt-password-file is read once; one trailing newline dropped; redacted in logs."""
        secret = tmp_path / "password"
        secret.write_text("s3cret\n")
        settings = _load("--mqtt-username", "bridge", "--mqtt-password-file", str(secret))
        assert settings.mqtt_password is not None
        assert "s3cret" == settings.mqtt_password.get_secret_value()
        assert "s3cret" in settings.secret_values()
        assert "**********" == settings.public_dict()["mqtt_password"]

    def test_both_forms_are_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The password and its file together exit 2 naming both."""
        secret = tmp_path / "password"
        secret.write_text("one")
        with pytest.raises(SystemExit) as exit_info:
            _load(
                "--mqtt-username",
                "u",
                "--mqtt-password",
                "two",
                "--mqtt-password-file",
                str(secret),
            )
        assert 2 == exit_info.value.code
        assert "--mqtt-password-file" in capsys.readouterr().err

    def test_a_password_needs_a_user(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A password without --mqtt-username exits 2 saying so."""
        with pytest.raises(SystemExit):
            _load("--mqtt-password", "x")
        assert "--mqtt-username" in capsys.readouterr().err

    def test_an_unreadable_file_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A password file that cannot be read is a bad setting, not a traceback."""
        with pytest.raises(SystemExit) as exit_info:
            _load("--mqtt-username", "u", "--mqtt-password-file", "/nonexistent/password")
        assert 2 == exit_info.value.code
        assert "--mqtt-password-file" in capsys.readouterr().err


class TestTopicFilter:
    @pytest.mark.parametrize("value", ["sensors/+/readings", "sensors/#", "#", "+/+", "a"])
    def test_valid(self, value: str) -> None:
        """Wildcards as whole levels are filters."""
        assert value == check_topic_filter(value)

    @pytest.mark.parametrize("value", ["", "sensors/#/x", "sensors/a+/readings", "sen#"])
    def test_invalid(self, value: str) -> None:
        """Empty, '#' not last or '+' inside a level are refused."""
        with pytest.raises(ValueError, match=r"filter|level|last"):
            check_topic_filter(value)


class TestDevices:
    def test_template_needs_the_sensor_id(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A topic template without {sensor_id} exits 2."""
        with pytest.raises(SystemExit):
            load_settings(DevicesSettings, ["--topic-template", "sensors/readings"])
        assert "{sensor_id}" in capsys.readouterr().err

    def test_sensor_prefix_names_the_fleet(self) -> None:
        """--sensor-prefix device- gives device-0000 ..., each a valid sensor id."""
        settings = load_settings(DevicesSettings, ["--sensor-prefix", "device-", "--sensors", "3"])
        fleet = SensorFleet(settings.sensors, id_prefix=settings.sensor_prefix)
        assert ["device-0000", "device-0001", "device-0002"] == fleet.sensor_ids
        assert all(is_sensor_id(sensor) for sensor in fleet.sensor_ids)

    @pytest.mark.parametrize("prefix", ["", "dev ice-", "d/", "x" * 58])
    def test_a_prefix_that_makes_no_valid_id_exits_2(
        self, prefix: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Empty, a character sensor ids can't hold, or too long for 64 with the number."""
        with pytest.raises(SystemExit):
            load_settings(DevicesSettings, ["--sensor-prefix", prefix])
        assert "SENSORSTREAM_SENSOR_PREFIX" in capsys.readouterr().err


class TestCommandLine:
    def test_help_lists_flags_with_variables(self) -> None:
        """--help names each flag's variable; the console script runs."""
        out = subprocess.run(
            [sys.executable, "-m", "sensorstream.bridge", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
            check=False,
        )
        assert 0 == out.returncode
        assert "--mqtt-password-file" in out.stdout
        assert "SENSORSTREAM_MQTT_PASSWORD_FILE" in out.stdout
