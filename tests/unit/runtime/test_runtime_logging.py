"""Specification of the shared logging setup (sensorstream.runtime.logging)."""

from __future__ import annotations

import orjson
import pytest
import structlog
from pydantic import SecretStr

from sensorstream.runtime import configure_logging, redact_secrets


@pytest.fixture(autouse=True)
def _restored_logging() -> object:
    """configure_logging binds the test's captured stderr: undo it after each test, or
    later tests would log to a closed file."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


class TestRedactSecrets:
    def test_masks_secret_keys_and_secretstr(self) -> None:
        """Values under secret-looking keys and any SecretStr are masked."""
        event = {"event": "x", "sasl_password": "p", "token": "t", "other": SecretStr("s"), "n": 1}

        assert {
            "event": "x",
            "sasl_password": "**********",
            "token": "**********",
            "other": "**********",
            "n": 1,
        } == redact_secrets(None, "info", event)

    def test_masks_inside_nested_settings(self) -> None:
        """A logged settings dict is redacted one level down too."""
        event = {"event": "x", "settings": {"sasl_password": "p", "rate": 1}}

        assert {"sasl_password": "**********", "rate": 1} == redact_secrets(None, "info", event)[
            "settings"
        ]


class TestConfigureLogging:
    def test_json_lines_carry_service_version_instance(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every JSON line names the service, its version and the instance."""
        configure_logging(service="svc", version="1.2", instance="i-1", fmt="json", level="info")

        structlog.get_logger().info("thing_happened", count=3, password="secret")
        structlog.get_logger().debug("not_shown")

        lines = capsys.readouterr().err.strip().splitlines()
        record = orjson.loads(lines[-1])
        assert 1 == len(lines)
        assert ("thing_happened", "svc", "1.2", "i-1", 3, "**********", "info") == (
            record["event"],
            record["service"],
            record["version"],
            record["instance"],
            record["count"],
            record["password"],
            record["level"],
        )
