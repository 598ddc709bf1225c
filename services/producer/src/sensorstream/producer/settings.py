"""The producer's settings: one pydantic-settings model, every field a flag and a variable.

``--rate`` takes events per second (0.1 and up) or ``max``; ``--rate-profile`` shapes
it over time; ``--resume-seq`` (on by default) continues each sensor's ``seq`` from the
topic after a restart (``_resume.py``). Cross-field rules (burst shorter than its
period, idempotence needs ``acks=all``) are checked here so a bad combination exits 2
before anything starts.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from sensorstream.runtime import ServiceSettings
from sensorstream.schema import INPUT_TOPIC

__all__ = ["MIN_RATE", "Acks", "Compression", "ProducerSettings", "RateProfileName"]

MIN_RATE = 0.1
"""The slowest configurable rate, in events per second."""

Compression = Literal["none", "gzip", "lz4", "zstd"]
RateProfileName = Literal["constant", "poisson", "sine", "burst"]
Acks = Literal["all", "1", "0"]


class ProducerSettings(ServiceSettings):
    """Settings of ``sensorstream-producer``; flags and ``SENSORSTREAM_*`` variables."""

    service_name: ClassVar[str] = "sensorstream-producer"

    topic: str = Field(INPUT_TOPIC, min_length=1, max_length=249, description="Topic to write to.")
    partitions: int = Field(
        6, ge=1, le=10_000, description="Partitions when the topic is created (never altered)."
    )
    replication_factor: int = Field(
        1, ge=1, le=32, description="Replication factor when the topic is created."
    )
    sensors: int = Field(10, ge=1, le=10_000_000, description="Number of simulated sensors.")
    rate: float | Literal["max"] = Field(
        10.0,
        description=f"Events per second (from {MIN_RATE}), or 'max' to send as fast as acked.",
    )
    rate_profile: RateProfileName = Field(
        "constant", description="How the rate varies: constant, poisson, sine or burst."
    )
    sine_period: float = Field(60.0, gt=0, description="sine profile: seconds per full cycle.")
    sine_amplitude: float = Field(
        0.5, ge=0, le=1, description="sine profile: swing as a fraction of --rate (0..1)."
    )
    burst_every: float = Field(
        60.0, gt=0, description="burst profile: seconds from one burst start to the next."
    )
    burst_multiplier: float = Field(
        5.0, ge=1, description="burst profile: rate multiplier during a burst."
    )
    burst_duration: float = Field(
        5.0, gt=0, description="burst profile: seconds each burst lasts (< --burst-every)."
    )
    resume_seq: bool = Field(
        True,
        description="At start-up, continue each sensor's seq after the highest one already "
        "in --topic (--no-resume-seq: every sensor starts at 0).",
    )
    count: int | None = Field(None, ge=1, description="Stop after this many events.")
    duration: float | None = Field(None, gt=0, description="Stop after this many seconds.")
    seed: int | None = Field(None, description="Seed for a reproducible fleet and schedule.")
    anomaly_probability: float = Field(
        0.001, ge=0, le=1, description="Chance that a reading is an anomaly spike (0..1)."
    )
    compression: Compression = Field(
        "none", description="Batch compression: none, gzip, lz4 or zstd."
    )
    acks: Acks = Field("all", description="Acknowledgements the broker must give: all, 1 or 0.")
    idempotence: bool = Field(
        True, description="Idempotent producer (no duplicates on retry; needs acks=all)."
    )
    linger_ms: int = Field(
        5, ge=0, le=60_000, description="Milliseconds a partial batch may wait for more events."
    )
    batch_size: int = Field(
        131_072,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Maximum bytes per partition batch.",
    )
    max_in_flight_batches: int = Field(
        24,
        ge=1,
        le=10_000,
        description="Batches sent but not yet acknowledged before sending waits (bounds memory).",
    )

    @field_validator("rate", mode="before")
    @classmethod
    def _check_rate(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "max":
                return "max"
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"expected a number of events per second >= {MIN_RATE} or 'max'"
                ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number of events per second >= {MIN_RATE} or 'max'")
        if not math.isfinite(value) or value < MIN_RATE:
            raise ValueError(f"expected a number of events per second >= {MIN_RATE} or 'max'")
        return float(value)

    @field_validator("burst_duration")
    @classmethod
    def _check_burst_duration(cls, value: float, info: ValidationInfo) -> float:
        every = info.data.get("burst_every")
        if every is not None and value >= every:
            raise ValueError(
                f"must be shorter than --burst-every / SENSORSTREAM_BURST_EVERY ({every:g}s)"
            )
        return value

    @field_validator("idempotence")
    @classmethod
    def _check_idempotence(cls, value: bool, info: ValidationInfo) -> bool:
        acks = info.data.get("acks")
        if value and acks is not None and acks != "all":
            raise ValueError(
                f"idempotence needs --acks all (got acks={acks}); set --no-idempotence / "
                "SENSORSTREAM_IDEMPOTENCE=false to use weaker acks"
            )
        return value

    @property
    def rate_per_second(self) -> float | None:
        """The configured rate, or ``None`` for ``max``."""
        return None if self.rate == "max" else float(self.rate)

    def kafka_acks(self) -> int | str:
        """``acks`` as aiokafka wants it."""
        return "all" if self.acks == "all" else int(self.acks)

    def kafka_compression(self) -> str | None:
        """``compression`` as aiokafka wants it."""
        return None if self.compression == "none" else self.compression
