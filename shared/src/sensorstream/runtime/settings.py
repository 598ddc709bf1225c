"""Settings plumbing shared by every Sensorstream service.

Each service declares one ``pydantic-settings`` model that subclasses
:class:`ServiceSettings`. Every field is then settable three ways, highest
precedence first: a CLI flag (``--rate``), an environment variable
(``SENSORSTREAM_RATE``), the default. ``--help`` lists every flag with its
variable and default.

A bad value never produces a traceback: :func:`load_settings` prints one line
that names the flag *and* the variable, says what would be valid, and exits
with status 2 (the convention of argparse and most Unix tools).

This module must never log or print a secret: secrets are ``SecretStr``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict, SettingsError

__all__ = [
    "ENV_PREFIX",
    "EXIT_BAD_SETTING",
    "LogFormat",
    "LogLevel",
    "ServiceSettings",
    "load_settings",
    "parse_bootstrap_servers",
]

ENV_PREFIX = "SENSORSTREAM_"
EXIT_BAD_SETTING = 2

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# host:port, host may be a name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")


def parse_bootstrap_servers(value: str) -> list[str]:
    """Split and check a comma-separated ``host:port`` list; raise ``ValueError`` if malformed."""
    servers = [part.strip() for part in value.split(",") if part.strip()]
    if not servers:
        raise ValueError("expected at least one host:port, e.g. 127.0.0.1:9092")
    for server in servers:
        match = _HOST_PORT.match(server)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{server!r} is not host:port (e.g. 127.0.0.1:9092 or kafka:9092)")
    return servers


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Settings every service has: Kafka connection, observability, lifecycle.

    Subclasses add their own fields and set ``service_name``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_exit_on_error=False,
        extra="ignore",
        validate_default=True,
    )

    service_name: ClassVar[str] = "sensorstream"

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism (SASL_* only).")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: str | None = Field(
        None, description="CA bundle for SSL; host names are always checked."
    )
    instance_id: str = Field(
        default_factory=_default_instance_id,
        description="Name of this instance in logs, metrics and dead-letter headers "
        "(default: hostname-pid).",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address for /metrics, /healthz and /readyz (0.0.0.0 in containers).",
    )
    metrics_port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="Port for /metrics, /healthz and /readyz; 0 = any free port.",
    )
    log_format: LogFormat | None = Field(
        None, description="json or console (default: console on a terminal, json otherwise)."
    )
    log_level: LogLevel = Field("info", description="Lowest log level written.")
    summary_interval: float = Field(10.0, gt=0, description="Seconds between summary log lines.")
    startup_timeout: float = Field(
        60.0, gt=0, description="Seconds to keep retrying an unreachable broker at start-up."
    )
    shutdown_timeout: float = Field(
        15.0, gt=0, description="Seconds a SIGTERM may take to flush and commit before exit."
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        return ",".join(parse_bootstrap_servers(value))

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # --help shows each flag's environment variable next to its description.
        changed = False
        for name, field in cls.model_fields.items():
            env = f"{ENV_PREFIX}{name.upper()}"
            if field.description and env not in field.description:
                field.description = f"{field.description} [env: {env}]"
                changed = True
        if changed:
            cls.model_rebuild(force=True)

    @property
    def bootstrap_list(self) -> list[str]:
        return self.bootstrap_servers.split(",")

    def resolved_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain values for a start-up log line; secrets stay masked."""
        return {
            key: ("**********" if isinstance(value, SecretStr) else value) for key, value in self
        }


S = TypeVar("S", bound=ServiceSettings)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting: flag, variable, the value given and what would be valid."""
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "?"
        given = error.get("input")
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        shown = "" if isinstance(given, dict) else f" (got {str(given)[:80]!r})"
        lines.append(
            f"invalid setting {_flag(field)} / {ENV_PREFIX}{field.upper()}{shown}: {message}"
        )
    return "; ".join(lines)


def load_settings(cls: type[S], argv: Sequence[str] | None = None, *, prog: str | None = None) -> S:
    """Build ``cls`` from CLI flags, environment and defaults, or exit 2 with one line."""
    prog = prog or cls.service_name
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return CliApp.run(cls, cli_args=args, _cli_prog_name=prog)
    except ValidationError as exc:
        _exit_bad_setting(prog, describe_validation_error(exc))
    except SettingsError as exc:
        message = str(exc).removeprefix("error parsing CLI: ")
        _exit_bad_setting(prog, f"{message} (see {prog} --help)")


def _exit_bad_setting(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_SETTING)
