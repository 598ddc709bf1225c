"""Producer settings: flags, variables, defaults, and one-line errors with exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import load_settings


def _load(*argv: str) -> ProducerSettings:
    return load_settings(ProducerSettings, list(argv))


def _run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sensorstream.producer", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


class TestDefaults:
    def test_issue_defaults(self) -> None:
        """Defaults match the issue: 10 sensors, 6 partitions, constant rate, acks=all."""
        settings = _load()
        assert ("sensor-data", 6, 10, "constant", "all", True, "none") == (
            settings.topic,
            settings.partitions,
            settings.sensors,
            settings.rate_profile,
            settings.acks,
            settings.idempotence,
            settings.compression,
        )

    def test_env_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """SENSORSTREAM_<NAME> sets a field; the flag wins over it."""
        monkeypatch.setenv("SENSORSTREAM_SENSORS", "500")
        monkeypatch.setenv("SENSORSTREAM_RATE", "250")
        settings = _load("--rate", "75")
        assert (500, 75.0) == (settings.sensors, settings.rate)


class TestRate:
    @pytest.mark.parametrize(("given", "expected"), [("0.1", 0.1), ("12000", 12000.0)])
    def test_numbers(self, given: str, expected: float) -> None:
        """Any number from 0.1 up is a rate."""
        assert expected == _load("--rate", given).rate_per_second

    def test_max(self) -> None:
        """``max`` means as fast as acknowledged: no pacing."""
        settings = _load("--rate", "MAX")
        assert ("max", None) == (settings.rate, settings.rate_per_second)

    @pytest.mark.parametrize("given", ["-5", "0", "0.05", "fast", "nan", "inf"])
    def test_refused(self, given: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Anything else exits 2 with one line naming flag and variable."""
        with pytest.raises(SystemExit) as exited:
            _load("--rate", given)
        assert 2 == exited.value.code
        err = capsys.readouterr().err.strip().splitlines()
        assert 1 == len(err)
        assert "--rate / SENSORSTREAM_RATE" in err[0]
        assert ">= 0.1 or 'max'" in err[0]


class TestCombinations:
    def test_burst_longer_than_period(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A burst must be shorter than its period."""
        with pytest.raises(SystemExit):
            _load("--rate-profile", "burst", "--burst-every", "10", "--burst-duration", "10")
        assert "--burst-duration / SENSORSTREAM_BURST_DURATION" in capsys.readouterr().err

    def test_weak_acks_need_idempotence_off(self, capsys: pytest.CaptureFixture[str]) -> None:
        """acks=1 with idempotence on is refused; with it off it is accepted."""
        with pytest.raises(SystemExit):
            _load("--acks", "1")
        assert "--no-idempotence" in capsys.readouterr().err
        assert 1 == _load("--acks", "1", "--no-idempotence").kafka_acks()

    def test_compression_mapping(self) -> None:
        """``none`` is no compression for aiokafka; the others pass through."""
        assert None is _load().kafka_compression()
        assert "lz4" == _load("--compression", "lz4").kafka_compression()


class TestResumeSeq:
    def test_on_by_default(self) -> None:
        """A restarted producer continues each sensor's seq unless told otherwise."""
        assert True is _load().resume_seq

    def test_flag_and_variable_turn_it_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """--no-resume-seq and SENSORSTREAM_RESUME_SEQ=false start every sensor at 0."""
        assert False is _load("--no-resume-seq").resume_seq
        monkeypatch.setenv("SENSORSTREAM_RESUME_SEQ", "false")
        assert (False, True) == (_load().resume_seq, _load("--resume-seq").resume_seq)

    def test_bad_variable_exits_2(self) -> None:
        """A value that is not a boolean exits 2 with one line naming the variable."""
        result = _run_cli(env={"SENSORSTREAM_RESUME_SEQ": "maybe"})
        assert 2 == result.returncode
        lines = result.stderr.strip().splitlines()
        assert 1 == len(lines), result.stderr
        assert "--resume-seq / SENSORSTREAM_RESUME_SEQ" in lines[0]


class TestCommandLine:
    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--rate", "-5"], "--rate / SENSORSTREAM_RATE"),
            (["--rate-profile", "zigzag"], "--rate-profile / SENSORSTREAM_RATE_PROFILE"),
            (["--bootstrap-servers", "no-port"], "--bootstrap-servers / SENSORSTREAM_BOOTSTRAP"),
            (["--partitions", "0"], "--partitions / SENSORSTREAM_PARTITIONS"),
            (["--compression", "brotli"], "--compression / SENSORSTREAM_COMPRESSION"),
        ],
    )
    def test_bad_value_exits_2_with_one_line(self, argv: list[str], named: str) -> None:
        """The real CLI: exit 2, one stderr line naming the setting, no traceback."""
        result = _run_cli(*argv)
        assert 2 == result.returncode
        lines = result.stderr.strip().splitlines()
        assert 1 == len(lines), result.stderr
        assert named in lines[0]
        assert "Traceback" not in result.stderr

    def test_bad_env_value_exits_2(self) -> None:
        """A bad environment variable is reported the same way."""
        result = _run_cli(env={"SENSORSTREAM_SENSORS": "-1"})
        assert 2 == result.returncode
        assert "--sensors / SENSORSTREAM_SENSORS" in result.stderr

    def test_metrics_port_in_use_exits_2(self) -> None:
        """A taken metrics port is a bad setting, caught before Kafka is contacted."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = _run_cli("--metrics-port", str(port), "--log-level", "error")
        assert 2 == result.returncode
        last_line = result.stderr.strip().splitlines()[-1]
        assert "--metrics-port / SENSORSTREAM_METRICS_PORT" in last_line
        assert "Traceback" not in result.stderr

    def test_help_lists_flags_with_variables(self) -> None:
        """--help shows every producer flag with its environment variable."""
        result = _run_cli("--help")
        assert 0 == result.returncode
        for name in ProducerSettings.model_fields:
            assert f"--{name.replace('_', '-')}" in result.stdout
            assert f"SENSORSTREAM_{name.upper()}" in result.stdout.replace("\n", "")
