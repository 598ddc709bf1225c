"""Settings of the processor service: one pydantic-settings model.

Every field is a CLI flag (``--window-size``) and an environment variable
(``SENSORSTREAM_WINDOW_SIZE``); ``sensorstream-processor --help`` lists them all.
A bad value exits with status 2 and one line naming the flag and the variable
(see :func:`sensorstream.runtime.load_settings`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from sensorstream.runtime import ServiceSettings
from sensorstream.schema import AGGREGATES_TOPIC, ALERTS_TOPIC, DLQ_TOPIC, INPUT_TOPIC

__all__ = ["DEFAULT_GROUP_ID", "DeliveryGuarantee", "ProcessorSettings"]

DEFAULT_GROUP_ID = "sensorstream-processor"

DeliveryGuarantee = Literal["at_least_once", "exactly_once"]


class ProcessorSettings(ServiceSettings):
    """Everything the processor can be told from the command line or the environment."""

    service_name: ClassVar[str] = "sensorstream-processor"

    metrics_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port for /metrics, /healthz and /readyz; 0 = any free port.",
    )

    # -- topics and group -------------------------------------------------------------
    topic: str = Field(INPUT_TOPIC, min_length=1, description="Input topic of sensor readings.")
    group_id: str = Field(
        DEFAULT_GROUP_ID,
        min_length=1,
        description="Consumer group id; replicas with the same id share the partitions.",
    )
    aggregates_topic: str = Field(
        AGGREGATES_TOPIC, min_length=1, description="Topic for closed window aggregates."
    )
    alerts_topic: str = Field(ALERTS_TOPIC, min_length=1, description="Topic for alerts.")
    dlq_topic: str = Field(
        DLQ_TOPIC,
        min_length=1,
        description="Dead-letter topic for events that cannot be processed.",
    )
    output_partitions: int = Field(
        6, ge=1, description="Partitions of the output topics when the processor creates them."
    )
    replication_factor: int = Field(
        1,
        ge=1,
        description="Replication factor of the output topics when the processor creates them.",
    )
    wait_for_topic: bool = Field(
        True,
        description="Wait up to --startup-timeout for the input topic to exist "
        "(false: fail at once if it is missing).",
    )

    # -- windows and alerts -----------------------------------------------------------
    window_size: float = Field(
        10.0, gt=0, le=86_400, description="Tumbling window size in seconds (event time)."
    )
    allowed_lateness: float = Field(
        5.0, ge=0, le=86_400, description="Seconds an event may arrive after its window's end."
    )
    idle_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds the broker must confirm a partition caught up and silent before "
        "it is idle and all its open windows close; time the broker is unreachable or the "
        "partition's leader moves does not count. A sensor that goes quiet while others on "
        "its partition send is closed by their watermark.",
    )
    max_future_skew: float = Field(
        300.0,
        ge=0,
        le=31 * 86_400,
        description="Seconds an event time may lie ahead of this processor's clock; a later "
        "one (a device clock far off) goes to the DLQ as future_event_time and never moves "
        "a watermark.",
    )
    drop_late: bool = Field(
        False,
        description="Drop events later than the allowed lateness (counted as outcome "
        "'dropped', still alerted on and handled) instead of sending them to the DLQ as "
        "late_event.",
    )
    temperature_high: float = Field(45.0, description="Alert when temperature rises above (°C).")
    temperature_low: float = Field(-10.0, description="Alert when temperature falls below (°C).")
    humidity_high: float = Field(90.0, description="Alert when humidity rises above (%).")
    humidity_low: float = Field(10.0, description="Alert when humidity falls below (%).")
    temperature_hysteresis: float = Field(
        2.0, ge=0, description="°C a temperature must move back past its threshold to re-arm."
    )
    humidity_hysteresis: float = Field(
        5.0, ge=0, description="Percentage points humidity must move back to re-arm."
    )

    # -- delivery ---------------------------------------------------------------------
    guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once (commit after outputs are acknowledged) or exactly_once "
        "(outputs and offsets in one Kafka transaction).",
    )
    handler: str | None = Field(
        None,
        description="Your async event handler as module:function or an entry point name "
        "(group sensorstream.handlers); none by default.",
    )
    handler_retries: int = Field(
        3, ge=0, le=100, description="Retries of a failing handler call before dead-lettering."
    )
    handler_backoff: float = Field(
        0.2, ge=0, le=60, description="First retry delay in seconds; doubles per retry."
    )
    commit_interval: float = Field(
        1.0, gt=0, le=300, description="Seconds between offset commits (or transactions)."
    )
    retry_budget: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="Seconds a retriable Kafka error (broker unreachable, leader moving) is "
        "retried with backoff, per operation (outputs, commits, fetches, admin calls), before "
        "the processor gives up and exits 1.",
    )
    max_batch: int = Field(5000, ge=1, le=1_000_000, description="Most records fetched per poll.")
    partition_buffer: int = Field(
        20_000,
        ge=1,
        description="Fetched events held per partition before fetching for it pauses.",
    )
    fetch_min_bytes: int = Field(
        1,
        ge=1,
        le=64 * 1024 * 1024,
        description="Bytes the broker gathers before answering a fetch (up to --fetch-max-wait); "
        "raise it (e.g. 65536) to trade a few ms of latency for far less CPU at low rates.",
    )
    fetch_max_wait: float = Field(
        0.5,
        gt=0,
        le=30,
        description="Seconds the broker may hold a fetch to reach --fetch-min-bytes.",
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
        description="Seconds between polls before the member is considered stuck; the "
        "processor polls independently of handler speed.",
    )

    # Cross-field checks sit on the later field so the error names the flag to fix.
    @field_validator("temperature_low")
    @classmethod
    def _below_temperature_high(cls, value: float, info: ValidationInfo) -> float:
        high = info.data.get("temperature_high")
        if high is not None and value >= high:
            raise ValueError(f"must be below --temperature-high ({high:g})")
        return value

    @field_validator("humidity_low")
    @classmethod
    def _below_humidity_high(cls, value: float, info: ValidationInfo) -> float:
        high = info.data.get("humidity_high")
        if high is not None and value >= high:
            raise ValueError(f"must be below --humidity-high ({high:g})")
        return value

    @field_validator("fetch_max_wait")
    @classmethod
    def _below_half_the_idle_timeout(cls, value: float, info: ValidationInfo) -> float:
        idle = info.data.get("idle_timeout")
        if idle is not None and 2 * value >= idle:
            # A partition counts as unanswered after 2 x fetch_max_wait without a response;
            # that must come well before it could count as idle.
            raise ValueError(f"must be below half of --idle-timeout ({idle:g})")
        return value

    @field_validator("heartbeat_interval")
    @classmethod
    def _below_session_timeout(cls, value: float, info: ValidationInfo) -> float:
        session = info.data.get("session_timeout")
        if session is not None and value >= session:
            raise ValueError(f"must be below --session-timeout ({session:g})")
        return value
