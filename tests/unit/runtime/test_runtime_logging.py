"""Specification of the shared logging setup (sensorstream.runtime.logging)."""

from __future__ import annotations

import logging

import orjson
import pytest
import structlog
from pydantic import SecretStr

from sensorstream.runtime import configure_logging, redact_secrets
from sensorstream.runtime.logging import SecretRedactor


@pytest.fixture(autouse=True)
def _restored_logging() -> object:
    """configure_logging binds the test's captured stderr: undo it after each test, or
    later tests would log to a closed file."""
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


class TestRedactionByValue:
    SECRET = "pa55-w0rd!"

    def test_a_configured_secret_is_masked_wherever_it_is(self) -> None:
        """By value, at any depth, inside longer strings, in lists and under any key."""
        redact = SecretRedactor([self.SECRET])
        event = {
            "event": f"connecting with {self.SECRET}",
            "deep": {"a": [{"b": f"x{self.SECRET}y"}], "n": 3},
            "args": (self.SECRET, 1),
        }

        cleaned = redact(None, "info", event)

        assert self.SECRET not in repr(cleaned)
        assert ("connecting with **********", "x**********y", 3) == (
            cleaned["event"],
            cleaned["deep"]["a"][0]["b"],
            cleaned["deep"]["n"],
        )

    def test_secret_keys_are_masked_at_any_depth_but_file_paths_are_not(self) -> None:
        cleaned = SecretRedactor()(
            None,
            "info",
            {
                "event": "x",
                "settings": {"client": {"sasl_plain_password": "p", "ssl_key_password": "k"}},
                "sasl_password_file": "/run/secrets/sasl",
            },
        )

        assert (
            {"sasl_plain_password": "**********", "ssl_key_password": "**********"},
            "/run/secrets/sasl",
        ) == (cleaned["settings"]["client"], cleaned["sasl_password_file"])

    def test_an_object_whose_text_holds_the_secret_is_masked(self) -> None:
        """Anything else is rendered with str(): an exception carrying the secret too."""
        cleaned = SecretRedactor([self.SECRET])(
            None, "info", {"event": "x", "error": ValueError(f"bad {self.SECRET}")}
        )

        assert "bad **********" == cleaned["error"]

    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_no_line_of_a_configured_service_shows_the_secret(
        self, capsys: pytest.CaptureFixture[str], fmt: str
    ) -> None:
        """Our own lines, an exception's traceback and a third-party library's stdlib
        record (aiokafka logs that way), in both formats."""
        configure_logging(
            service="svc", version="1", instance="i", fmt=fmt, level="info", secrets=[self.SECRET]
        )

        structlog.get_logger().warning("started", url=f"sasl://user:{self.SECRET}@host")
        try:
            raise RuntimeError(f"refused {self.SECRET}")
        except RuntimeError:
            structlog.get_logger().exception("failed")
        logging.getLogger("aiokafka.conn").warning("Authenticating with %s", self.SECRET)
        try:
            raise OSError(f"socket {self.SECRET}")
        except OSError:
            logging.getLogger("aiokafka").exception("Unable connect")

        err = capsys.readouterr().err
        assert (self.SECRET not in err, 4) == (True, err.count("**********"))
        assert ("refused", "socket", "Authenticating with") == tuple(
            word for word in ("refused", "socket", "Authenticating with") if word in err
        )
