"""The bridge's settings, and the device simulator's: pydantic-settings models, every field
a flag and a ``SENSORSTREAM_*`` variable.

The MQTT connection (``--mqtt-host``, ``--mqtt-port``, ``--mqtt-username``,
``--mqtt-password`` / ``--mqtt-password-file``, ``--mqtt-client-id``) is shared by both; the
password follows the services' secret-file convention (``sensorstream.runtime.settings``):
the file is read once at start-up, one trailing newline dropped, and giving both the
password and its file is an error. It is a ``SecretStr`` and reaches the log redaction
through :meth:`MqttClientSettings.secret_values`.

There is deliberately no setting for the Kafka producer's ``acks`` or idempotence: QoS 1
end to end rests on ``acks=all`` with an idempotent producer, so the bridge always uses
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from sensorstream.producer._simulation import DEFAULT_SENSOR_PREFIX
from sensorstream.runtime import ENV_PREFIX, ServiceSettings
from sensorstream.runtime.settings import read_secret_file
from sensorstream.schema import DLQ_TOPIC, INPUT_TOPIC

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_TOPIC_FILTER",
    "BridgeSettings",
    "Compression",
    "DevicesSettings",
    "MqttClientSettings",
    "MqttProtocol",
    "check_topic_filter",
]

DEFAULT_TOPIC_FILTER = "sensors/+/readings"
DEFAULT_CLIENT_ID = "sensorstream-mqtt-bridge"
Compression = Literal["none", "gzip", "lz4", "zstd"]
MAX_SENSOR_PREFIX = 57
"""A sensor id is at most 64 characters: the prefix and up to 7 digits."""
MqttProtocol = Literal["3.1.1", "5"]


def check_topic_filter(value: str) -> str:
    """``value`` if it is a valid MQTT subscription filter, else ``ValueError`` saying why."""
    if not value:
        raise ValueError("expected an MQTT topic filter such as sensors/+/readings")
    if "\0" in value or len(value.encode()) > 65535:
        raise ValueError("a topic filter has no NUL character and at most 65535 bytes")
    levels = value.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError("'#' must be a whole level and the last one (sensors/#)")
        if "+" in level and level != "+":
            raise ValueError("'+' must be a whole level (sensors/+/readings)")
    return value


class MqttClientSettings(ServiceSettings):
    """The MQTT connection settings both commands share."""

    mqtt_host: str = Field("127.0.0.1", min_length=1, description="MQTT broker host.")
    mqtt_port: int = Field(1883, ge=1, le=65535, description="MQTT broker port.")
    mqtt_username: str | None = Field(None, description="MQTT user name.")
    mqtt_password: SecretStr | None = Field(
        None, description="MQTT password (never logged); prefer --mqtt-password-file."
    )
    mqtt_password_file: Path | None = Field(
        None, description="File holding the MQTT password (a Docker/Kubernetes secret)."
    )
    mqtt_protocol: MqttProtocol = Field(
        "3.1.1",
        description="MQTT protocol version: 3.1.1 (clean session off) or 5 (clean start off, "
        "--mqtt-session-expiry, Receive Maximum).",
    )
    mqtt_keepalive: int = Field(
        30, ge=5, le=65535, description="Seconds between MQTT keepalive pings."
    )
    mqtt_client_id: str = Field(
        DEFAULT_CLIENT_ID,
        min_length=1,
        max_length=256,
        description="MQTT client id: the key of the broker-side session.",
    )

    @field_validator("mqtt_password_file")
    @classmethod
    def _password_file_is_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _password_and_its_file(self) -> Self:
        if self.mqtt_password_file is not None:
            from_file = read_secret_file(self.mqtt_password_file)
            current = self.mqtt_password
            # A model validated again (model_validate) holds the file's value already.
            if current is not None and current.get_secret_value() != from_file.get_secret_value():
                raise ValueError(
                    f"give --mqtt-password / {ENV_PREFIX}MQTT_PASSWORD or --mqtt-password-file "
                    f"/ {ENV_PREFIX}MQTT_PASSWORD_FILE, not both"
                )
            self.mqtt_password = from_file
        if self.mqtt_password is not None and not self.mqtt_username:
            raise ValueError(
                f"--mqtt-password(-file) needs --mqtt-username / {ENV_PREFIX}MQTT_USERNAME"
            )
        return self

    @property
    def mqtt_address(self) -> str:
        return f"{self.mqtt_host}:{self.mqtt_port}"

    def secret_values(self) -> list[str]:
        """The Kafka secrets and the MQTT password, for the log redaction to mask."""
        values = super().secret_values()
        if self.mqtt_password is not None:
            values.append(self.mqtt_password.get_secret_value())
        return values


class BridgeSettings(MqttClientSettings):
    """Settings of ``sensorstream-mqtt-bridge``; flags and ``SENSORSTREAM_*`` variables."""

    service_name: ClassVar[str] = "sensorstream-mqtt-bridge"

    mqtt_topic: str = Field(
        DEFAULT_TOPIC_FILTER,
        description="MQTT topic filter to subscribe to (QoS 1), e.g. sensors/+/readings.",
    )
    mqtt_session_expiry: int = Field(
        86_400,
        ge=1,
        le=4_294_967_295,
        description="Seconds the broker keeps the bridge's session (and queues its messages) "
        "while it is away.",
    )
    mqtt_reconnect_max: float = Field(
        10.0, gt=0, le=300, description="Longest wait in seconds between MQTT reconnect attempts."
    )
    topic: str = Field(
        INPUT_TOPIC, min_length=1, max_length=249, description="Kafka topic for valid readings."
    )
    dlq_topic: str = Field(
        DLQ_TOPIC, min_length=1, max_length=249, description="Kafka topic for bad payloads."
    )
    partitions: int = Field(
        6, ge=1, le=10_000, description="Partitions when the topics are created (never altered)."
    )
    replication_factor: int = Field(
        1, ge=1, le=32, description="Replication factor when the topics are created."
    )
    max_in_flight: int = Field(
        5_000,
        ge=1,
        le=65_535,
        description="MQTT messages received but not yet acknowledged, at most (MQTT 5 Receive "
        "Maximum; reading pauses there).",
    )
    dedup_window: int = Field(
        20_000,
        ge=0,
        le=10_000_000,
        description="Event ids remembered to drop MQTT redeliveries (0: off); at start-up "
        "seeded from the end of --topic.",
    )
    linger_ms: int = Field(
        5, ge=0, le=60_000, description="Milliseconds a partial Kafka batch may wait for more."
    )
    batch_size: int = Field(
        131_072, ge=1024, le=16 * 1024 * 1024, description="Maximum bytes per partition batch."
    )
    compression: Compression = Field(
        "none", description="Kafka batch compression: none, gzip, lz4 or zstd."
    )
    dlq_max_bytes: int = Field(
        1_048_576,
        ge=4096,
        le=64 * 1024 * 1024,
        description="Largest dead letter written; a bigger payload is cut (size and SHA-256 "
        "kept in headers).",
    )

    @field_validator("mqtt_topic")
    @classmethod
    def _check_filter(cls, value: str) -> str:
        return check_topic_filter(value)

    def kafka_compression(self) -> str | None:
        """``compression`` as aiokafka wants it."""
        return None if self.compression == "none" else self.compression


class DevicesSettings(MqttClientSettings):
    """Settings of ``sensorstream-mqtt-devices`` (the Kafka settings are not used)."""

    service_name: ClassVar[str] = "sensorstream-mqtt-devices"

    mqtt_client_id: str = Field(
        "sensorstream-mqtt-devices",
        min_length=1,
        max_length=256,
        description="MQTT client id of the simulated gateway.",
    )
    sensors: int = Field(10, ge=1, le=1_000_000, description="Number of simulated sensors.")
    sensor_prefix: str = Field(
        DEFAULT_SENSOR_PREFIX,
        min_length=1,
        max_length=MAX_SENSOR_PREFIX,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Sensor ids are this prefix and a zero-padded number (sensor-0000 ..); "
        "give each fleet sharing an input topic a prefix of its own, e.g. device-.",
    )
    rate: float = Field(100.0, gt=0, le=10_000_000, description="Readings per second.")
    count: int | None = Field(None, ge=1, description="Stop after this many readings.")
    duration: float | None = Field(None, gt=0, description="Stop after this many seconds.")
    seed: int | None = Field(None, description="Seed for a reproducible fleet.")
    anomaly_probability: float = Field(
        0.001, ge=0, le=1, description="Chance that a reading is an anomaly spike (0..1)."
    )
    topic_template: str = Field(
        "sensors/{sensor_id}/readings",
        description="MQTT topic of each reading; {sensor_id} is replaced by the sensor id.",
    )
    poison_every: int = Field(
        0, ge=0, description="Also publish one bad payload after every N readings (0: never)."
    )
    max_unacked: int = Field(
        10_000, ge=1, le=1_000_000, description="Publishes awaiting PUBACK before pausing."
    )
    drain_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for the last PUBACKs before giving up."
    )

    @field_validator("topic_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        if "{sensor_id}" not in value:
            raise ValueError("must contain {sensor_id}, e.g. sensors/{sensor_id}/readings")
        if "+" in value or "#" in value:
            raise ValueError("a topic to publish to has no wildcards (+ or #)")
        return value
