"""``sensorstream-audit`` settings: which pipeline to audit, over what range, and how to
report. Settable as flags, ``SENSORSTREAM_*`` variables or defaults, like the services'."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from sensorstream.runtime import LogLevel, ServiceSettings
from sensorstream.schema import AGGREGATES_TOPIC, DLQ_TOPIC, INPUT_TOPIC

from ._ledger import DEFAULT_WINDOW_MEMORY

__all__ = ["AuditSettings"]


class AuditSettings(ServiceSettings):
    """Audit a pipeline: every reading of the input topic is found in an aggregate or
    the DLQ, exactly once."""

    service_name: ClassVar[str] = "sensorstream-audit"

    metrics_port: int = Field(
        8002, ge=0, le=65535, description="--follow: port for /metrics, /healthz and /readyz."
    )
    log_level: LogLevel = Field("warning", description="Lowest log level written (to stderr).")
    topic: str = Field(INPUT_TOPIC, min_length=1, description="Input topic of sensor readings.")
    aggregates_topic: str = Field(
        AGGREGATES_TOPIC, min_length=1, description="Topic of the window aggregates."
    )
    dlq_topic: str = Field(DLQ_TOPIC, min_length=1, description="Dead-letter topic.")
    since: datetime | None = Field(
        None,
        description="Audit the input from this time (ISO 8601, UTC unless it says; or Unix "
        "seconds); default: the beginning.",
    )
    until: datetime | None = Field(
        None, description="Audit the input up to this time; default: where it ends now."
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description="How to read the aggregates and the DLQ (read_committed: what "
        "downstream consumers see).",
    )
    format: Literal["table", "json"] = Field(
        "table", description="Report as a table for people or JSON for machines (--json)."
    )
    limit: int = Field(20, ge=0, description="Most sensors listed in the report.")
    follow: bool = Field(
        False,
        description="Keep auditing the live pipeline and export the figures on /metrics.",
    )
    interval: float = Field(10.0, gt=0, description="--follow: seconds between passes.")
    grace: float = Field(
        60.0,
        gt=0,
        description="--follow: seconds a reading may take to reach an aggregate or the "
        "DLQ before it counts as missing (between 1x and 2x this).",
    )
    window_memory: int = Field(
        DEFAULT_WINDOW_MEMORY,
        ge=1,
        le=1024,
        description="Newest windows remembered per sensor to tell an identical "
        "re-emission from a window counted twice.",
    )

    @model_validator(mode="after")
    def _range_is_forwards(self) -> Self:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError(
                f"--until / SENSORSTREAM_UNTIL ({self.until.isoformat()}) must be after "
                f"--since / SENSORSTREAM_SINCE ({self.since.isoformat()})"
            )
        return self

    @property
    def since_ms(self) -> int | None:
        return _epoch_ms(self.since)

    @property
    def until_ms(self) -> int | None:
        return _epoch_ms(self.until)


def _epoch_ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
