"""Settings of the sink: one pydantic-settings model.

Every field is a CLI flag (``--batch-size``) and an environment variable
(``SENSORSTREAM_BATCH_SIZE``); ``sensorstream-sink --help`` lists them all. A bad value
exits with status 2 and one line naming the flag and the variable.

The database is given either as one URL (``--database-url`` /
``SENSORSTREAM_DATABASE_URL``, ``postgresql://user:password@host:port/db``) or as its
parts (``--database-host``, ``--database-port``, ``--database-user``,
``--database-name``) with the password in a file (``--database-password-file``, the
Docker/Kubernetes secrets convention) or, less safely, ``--database-password``. Both the
password and the URL are ``SecretStr``: never logged, and masked by value in every log
line (:meth:`SinkSettings.secret_values`).
"""

from __future__ import annotations

import math
import ssl
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator

from sensorstream.runtime import ENV_PREFIX, ServiceSettings
from sensorstream.runtime.settings import read_secret_file
from sensorstream.schema import AGGREGATES_TOPIC, ALERTS_TOPIC

__all__ = ["DEFAULT_GROUP_ID", "SinkSettings", "SslMode", "TimescaleMode"]

DEFAULT_GROUP_ID = "sensorstream-sink"

TimescaleMode = Literal["auto", "on", "off"]
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]

# The sink's own secret and the field that may give it from a file (the pattern of
# ServiceSettings' _SECRET_FILES).
_PASSWORD, _PASSWORD_FILE = "database_password", "database_password_file"


class SinkSettings(ServiceSettings):
    """Everything the sink can be told from the command line or the environment."""

    service_name: ClassVar[str] = "sensorstream-sink"

    metrics_port: int = Field(
        8004,
        ge=0,
        le=65535,
        description="Port for /metrics, /healthz and /readyz; 0 = any free port.",
    )

    # -- topics and group -------------------------------------------------------------
    aggregates_topic: str = Field(
        AGGREGATES_TOPIC, min_length=1, description="Topic of the window aggregates to store."
    )
    alerts_topic: str = Field(ALERTS_TOPIC, min_length=1, description="Topic of the alerts.")
    group_id: str = Field(
        DEFAULT_GROUP_ID,
        min_length=1,
        description="Consumer group id; sinks with the same id share the partitions.",
    )

    # -- database ---------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:port/database (never logged); "
        "instead of the --database-* parts.",
    )
    database_host: str = Field("127.0.0.1", min_length=1, description="PostgreSQL host.")
    database_port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port.")
    database_user: str = Field("sensorstream", min_length=1, description="PostgreSQL user.")
    database_name: str = Field("sensorstream", min_length=1, description="PostgreSQL database.")
    database_password: SecretStr | None = Field(
        None, description="PostgreSQL password (never logged); prefer --database-password-file."
    )
    database_password_file: Path | None = Field(
        None, description="File holding the PostgreSQL password (a Docker/Kubernetes secret)."
    )
    database_sslmode: SslMode = Field(
        "prefer",
        description="TLS to PostgreSQL: disable, prefer (TLS if the server offers it), require, "
        "verify-ca or verify-full (check the certificate, and with verify-full the host name).",
    )
    database_sslrootcert: FilePath | None = Field(
        None, description="CA bundle (PEM) to verify the server with (verify-ca, verify-full)."
    )
    database_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds one database call (connect, COPY, upsert) may take before it "
        "counts as a failure and is retried.",
    )
    database_retry_budget: float = Field(
        math.inf,
        gt=0,
        description="Seconds an unreachable database is retried (with backoff) before the "
        "sink exits 1; default inf: wait for it as long as it takes.",
    )
    timescaledb: TimescaleMode = Field(
        "auto",
        description="auto: use TimescaleDB (hypertable, hourly continuous aggregate) when the "
        "server has it, plain tables otherwise; on: require it; off: plain tables.",
    )

    # -- batching and delivery ---------------------------------------------------------
    batch_size: int = Field(
        5000, ge=1, le=1_000_000, description="Most records written in one database transaction."
    )
    batch_time: float = Field(
        1.0,
        gt=0,
        le=300,
        description="Seconds a batch may wait to fill after its first record before it is "
        "written anyway.",
    )
    retry_budget: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="Seconds a Kafka offset commit is retried; then it is left for the next "
        "batch's commit (the rows are in the database already: never fatal).",
    )
    session_timeout: float = Field(
        10.0, gt=0, description="Seconds without heartbeats before the group drops a member."
    )
    heartbeat_interval: float = Field(
        3.0, gt=0, description="Seconds between group heartbeats (below --session-timeout)."
    )
    max_poll_interval: float = Field(
        300.0,
        gt=0,
        description="Seconds between polls before the member leaves the group; a database "
        "outage longer than this hands the partitions to another sink (or back to this one "
        "once the database returns).",
    )

    @field_validator(_PASSWORD_FILE)
    @classmethod
    def _password_file_is_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_secret_file(value)
        return value

    @field_validator("heartbeat_interval")
    @classmethod
    def _below_session_timeout(cls, value: float, info: Any) -> float:
        session = info.data.get("session_timeout")
        if session is not None and value >= session:
            raise ValueError(f"must be below --session-timeout ({session:g})")
        return value

    @model_validator(mode="after")
    def _database_password_and_url(self) -> Self:
        path = self.database_password_file
        if path is not None:
            from_file = read_secret_file(path)
            current = self.database_password
            # Validation may run again on a model it filled: the same value is the file's.
            if current is not None and current.get_secret_value() != from_file.get_secret_value():
                raise ValueError(
                    f"give --database-password / {ENV_PREFIX}DATABASE_PASSWORD or "
                    f"--database-password-file / {ENV_PREFIX}DATABASE_PASSWORD_FILE, not both"
                )
            self.database_password = from_file
        if self.database_sslrootcert is not None and not self.database_sslmode.startswith("verify"):
            raise ValueError(
                f"--database-sslrootcert / {ENV_PREFIX}DATABASE_SSLROOTCERT needs "
                f"--database-sslmode / {ENV_PREFIX}DATABASE_SSLMODE verify-ca or verify-full "
                f"(it is {self.database_sslmode})"
            )
        if self.database_url is not None:
            # The message never quotes the URL: it may hold the password.
            problem = _url_problem(self.database_url.get_secret_value())
            if problem:
                raise ValueError(
                    f"--database-url / {ENV_PREFIX}DATABASE_URL {problem} (expected "
                    "postgresql://user:password@host:port/database)"
                )
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, the database's included, for the log redaction."""
        secrets = super().secret_values()
        if self.database_password is not None:
            secrets.append(self.database_password.get_secret_value())
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            secrets.append(url)
            password = urlsplit(url).password
            if password:
                secrets.extend({password, unquote(password)})
        return secrets

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect``: the URL or the parts, TLS, timeouts."""
        options: dict[str, Any] = {
            "timeout": self.database_timeout,
            "command_timeout": self.database_timeout,
            "ssl": self.database_sslmode,
            "server_settings": {"application_name": f"{self.service_name}-{self.instance_id}"},
        }
        if self.database_url is not None:
            options["dsn"] = self.database_url.get_secret_value()
        else:
            options.update(
                host=self.database_host,
                port=self.database_port,
                user=self.database_user,
                database=self.database_name,
            )
        if self.database_password is not None:
            options["password"] = self.database_password.get_secret_value()
        if self.database_sslrootcert is not None:
            context = ssl.create_default_context(cafile=str(self.database_sslrootcert))
            context.check_hostname = self.database_sslmode == "verify-full"
            options["ssl"] = context
        return options

    def database_address(self) -> str:
        """Where the database is, without credentials, for messages and logs."""
        if self.database_url is not None:
            parts = urlsplit(self.database_url.get_secret_value())
            host = parts.hostname or "localhost"
            return f"{host}:{parts.port or 5432}/{parts.path.lstrip('/') or '?'}"
        return f"{self.database_host}:{self.database_port}/{self.database_name}"


def _url_problem(url: str) -> str | None:
    """What is wrong with a database URL (never quoting it), or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("postgresql", "postgres"):
        return f"must start with postgresql:// (got scheme {parts.scheme or 'none'!r})"
    if not parts.hostname and "host=" not in parts.query:
        return "names no host"
    return None
