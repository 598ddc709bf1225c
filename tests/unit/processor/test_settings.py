"""Specification of the processor's settings: defaults, flags, env vars, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sensorstream.processor.settings import ProcessorSettings
from sensorstream.runtime import load_settings
from sensorstream.schema import AGGREGATES_TOPIC, DLQ_TOPIC, INPUT_TOPIC


class TestDefaults:
    def test_defaults_match_the_contract(self) -> None:
        """Defaults: input topic, group, 10 s windows, 5 s lateness, at-least-once, port 8001."""
        settings = load_settings(ProcessorSettings, [])
        expected = (INPUT_TOPIC, "sensorstream-processor", AGGREGATES_TOPIC, DLQ_TOPIC, 10.0, 5.0)
        actual = (
            settings.topic,
            settings.group_id,
            settings.aggregates_topic,
            settings.dlq_topic,
            settings.window_size,
            settings.allowed_lateness,
        )
        assert expected == actual
        assert ("at_least_once", 8001, None) == (
            settings.guarantee,
            settings.metrics_port,
            settings.handler,
        )

    def test_robustness_defaults(self) -> None:
        """Future skew 5 min, late readings dead-lettered, 5 min retry budget."""
        settings = load_settings(ProcessorSettings, [])

        assert (300.0, False, 300.0) == (
            settings.max_future_skew,
            settings.drop_late,
            settings.retry_budget,
        )

    def test_every_field_is_described(self) -> None:
        """--help documents every setting with its environment variable."""
        undocumented = [
            name
            for name, field in ProcessorSettings.model_fields.items()
            if not field.description or "SENSORSTREAM_" not in field.description
        ]
        assert [] == undocumented


class TestSources:
    def test_flags_override_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A CLI flag beats SENSORSTREAM_<NAME>, which beats the default."""
        monkeypatch.setenv("SENSORSTREAM_WINDOW_SIZE", "3")
        monkeypatch.setenv("SENSORSTREAM_GROUP_ID", "from-env")
        settings = load_settings(
            ProcessorSettings, ["--window-size", "7", "--guarantee", "exactly_once"]
        )
        assert (7.0, "from-env", "exactly_once") == (
            settings.window_size,
            settings.group_id,
            settings.guarantee,
        )


class TestInvalid:
    @pytest.mark.parametrize(
        ("argv", "fragment"),
        [
            (["--window-size", "0"], "--window-size / SENSORSTREAM_WINDOW_SIZE"),
            (["--guarantee", "maybe"], "--guarantee / SENSORSTREAM_GUARANTEE"),
            (
                ["--heartbeat-interval", "20"],
                "--heartbeat-interval / SENSORSTREAM_HEARTBEAT_INTERVAL",
            ),
            (["--temperature-low", "50"], "--temperature-low / SENSORSTREAM_TEMPERATURE_LOW"),
            (["--max-batch", "0"], "--max-batch / SENSORSTREAM_MAX_BATCH"),
            (["--fetch-min-bytes", "0"], "--fetch-min-bytes / SENSORSTREAM_FETCH_MIN_BYTES"),
            (["--fetch-max-wait", "0"], "--fetch-max-wait / SENSORSTREAM_FETCH_MAX_WAIT"),
            (["--max-future-skew", "-1"], "--max-future-skew / SENSORSTREAM_MAX_FUTURE_SKEW"),
            (["--retry-budget", "0"], "--retry-budget / SENSORSTREAM_RETRY_BUDGET"),
        ],
    )
    def test_bad_value_exits_2_naming_flag_and_variable(
        self, argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad value exits 2 with one line naming the flag and the variable."""
        with pytest.raises(SystemExit) as exited:
            load_settings(ProcessorSettings, argv)
        err = capsys.readouterr().err
        assert 2 == exited.value.code
        assert 1 == len(err.strip().splitlines())
        assert fragment in err

    def test_cli_bad_value_exits_2_with_one_line(self) -> None:
        """The real command line: exit status 2, one line on stderr, no traceback."""
        result = subprocess.run(
            [sys.executable, "-m", "sensorstream.processor", "--allowed-lateness", "-1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 2 == result.returncode
        assert [
            "sensorstream-processor: error: invalid setting --allowed-lateness / "
            "SENSORSTREAM_ALLOWED_LATENESS (got '-1'): Input should be greater than or equal to 0"
        ] == result.stderr.strip().splitlines()
