"""Settings plumbing shared by every Sensorstream service.

Each service declares one ``pydantic-settings`` model that subclasses
:class:`ServiceSettings`. Every field is then settable three ways, highest
precedence first: a CLI flag (``--rate``), an environment variable
(``SENSORSTREAM_RATE``), the default. ``--help`` lists every flag with its
variable and default.

A bad value never produces a traceback: :func:`load_settings` prints one line
that names the flag *and* the variable, says what would be valid, and exits
with status 2 (the convention of argparse and most Unix tools).

Every secret (``--sasl-password``, ``--ssl-key-password``, ``--metrics-auth-password``)
can also come from a file, ``--<name>-file`` / ``SENSORSTREAM_<NAME>_FILE``: the Docker
and Kubernetes secrets convention, and the way to keep a password out of
``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ``. The file is read once at start-up;
one trailing newline is dropped.

This module must never log or print a secret: secrets are ``SecretStr``, and
:meth:`ServiceSettings.secret_values` hands the values to the log redaction.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, Self, TypeVar

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict, SettingsError

__all__ = [
    "ENV_PREFIX",
    "EXIT_BAD_SETTING",
    "LogFormat",
    "LogLevel",
    "ServiceSettings",
    "load_settings",
    "parse_bootstrap_servers",
    "read_secret_file",
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


def read_secret_file(path: Path) -> SecretStr:
    """The secret in ``path``, without one trailing newline; ``ValueError`` says why not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError("it is not UTF-8 text") from exc
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError("the file is empty")
    return SecretStr(text)


# Each secret field and the field that may give it from a file instead.
_SECRET_FILES: dict[str, str] = {
    "sasl_password": "sasl_password_file",
    "ssl_key_password": "ssl_key_password_file",
    "metrics_auth_password": "metrics_auth_password_file",
}


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
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (never logged); prefer --sasl-password-file."
    )
    sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (a Docker/Kubernetes secret)."
    )
    ssl_cafile: FilePath | None = Field(
        None,
        description="CA bundle (PEM) to trust for SSL instead of the system's; host names "
        "are always checked.",
    )
    ssl_certfile: FilePath | None = Field(
        None, description="Client certificate (PEM) for mutual TLS; needs --ssl-keyfile."
    )
    ssl_keyfile: FilePath | None = Field(None, description="Private key (PEM) of --ssl-certfile.")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted --ssl-keyfile; prefer the -file form."
    )
    ssl_key_password_file: Path | None = Field(
        None, description="File holding the password of --ssl-keyfile."
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
    metrics_auth_username: str | None = Field(
        None,
        description="Require HTTP basic auth with this user on /metrics, /healthz and "
        "/readyz (with --metrics-auth-password-file).",
    )
    metrics_auth_password: SecretStr | None = Field(
        None, description="Password of --metrics-auth-username; prefer the -file form."
    )
    metrics_auth_password_file: Path | None = Field(
        None, description="File holding the password of --metrics-auth-username."
    )
    metrics_tls_certfile: FilePath | None = Field(
        None,
        description="Serve /metrics, /healthz and /readyz over HTTPS with this certificate "
        "(PEM; needs --metrics-tls-keyfile).",
    )
    metrics_tls_keyfile: FilePath | None = Field(
        None, description="Private key (PEM, unencrypted) of --metrics-tls-certfile."
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

    @field_validator("sasl_password_file", "ssl_key_password_file", "metrics_auth_password_file")
    @classmethod
    def _secret_file_is_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _secrets_and_their_files(self) -> Self:
        for secret, file_field in _SECRET_FILES.items():
            path: Path | None = getattr(self, file_field)
            if path is None:
                continue
            from_file = read_secret_file(path)
            current: SecretStr | None = getattr(self, secret)
            # Validation may run again on a model it filled (model_validate does):
            # the same value is the file's, not a second source.
            if current is not None and current.get_secret_value() != from_file.get_secret_value():
                raise ValueError(
                    f"give {_flag(secret)} / {ENV_PREFIX}{secret.upper()} or "
                    f"{_flag(file_field)} / {ENV_PREFIX}{file_field.upper()}, not both"
                )
            setattr(self, secret, from_file)
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        for name in ("ssl_cafile", "ssl_certfile"):
            if getattr(self, name) is not None and not tls:
                raise ValueError(
                    f"{_flag(name)} / {ENV_PREFIX}{name.upper()} needs --security-protocol / "
                    f"{ENV_PREFIX}SECURITY_PROTOCOL SSL or SASL_SSL (it is "
                    f"{self.security_protocol})"
                )
        pairs = (
            ("ssl_certfile", "ssl_keyfile"),
            ("metrics_tls_certfile", "metrics_tls_keyfile"),
            ("metrics_auth_username", "metrics_auth_password"),
        )
        for first, second in pairs:
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                given, missing = (first, second) if getattr(self, first) else (second, first)
                raise ValueError(
                    f"{_flag(given)} / {ENV_PREFIX}{given.upper()} needs "
                    f"{_flag(missing)} / {ENV_PREFIX}{missing.upper()}"
                    + (" (or its -file form)" if missing in _SECRET_FILES else "")
                )
        return self

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
            key: (
                "**********"
                if isinstance(value, SecretStr)
                else str(value)
                if isinstance(value, Path)
                else value
            )
            for key, value in self
        }

    def secret_values(self) -> list[str]:
        """The configured secrets themselves, for the log redaction to mask by value."""
        return [
            secret.get_secret_value()
            for name in _SECRET_FILES
            if (secret := getattr(self, name)) is not None
        ]


S = TypeVar("S", bound=ServiceSettings)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting: flag, variable, the value given and what would be valid."""
    lines = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if not error["loc"]:  # a check across settings names them itself
            lines.append(f"invalid settings: {message}")
            continue
        field = str(error["loc"][0])
        given = error.get("input")
        secret = field in _SECRET_FILES
        shown = "" if isinstance(given, dict) or secret else f" (got {str(given)[:80]!r})"
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
