"""The package exposes exactly the contract other services code against."""

import sensorstream.schema as schema

CONTRACT = {
    "SCHEMA_VERSION",
    "INPUT_TOPIC",
    "AGGREGATES_TOPIC",
    "ALERTS_TOPIC",
    "DLQ_TOPIC",
    "MAX_EVENT_BYTES",
    "SensorReading",
    "encode_reading",
    "decode_reading",
    "parse_reading",
    "RejectReason",
    "Rejection",
    "DeadLetterReason",
    "SensorstreamError",
    "PoisonEventError",
    "RetriableError",
    "OwnershipLostError",
    "FatalError",
    "ConfigError",
    "RecordTooLargeError",
    "RetriesExhaustedError",
    "WindowAggregate",
    "encode_aggregate",
    "decode_aggregate",
    "AlertKind",
    "Alert",
    "encode_alert",
    "decode_alert",
    "DeadLetterHeaders",
    "TOPOLOGY",
    "TopicRole",
    "TopicSpec",
    "Topology",
    "min_insync_replicas",
}


class TestPublicApi:
    def test_exports_the_whole_contract(self) -> None:
        """Every contracted name is in __all__."""
        assert set() == CONTRACT - set(schema.__all__)

    def test_exports_only_public_names(self) -> None:
        """No private (underscore) name is part of the contract."""
        assert [] == [name for name in schema.__all__ if name.startswith("_")]

    def test_everything_exported_exists(self) -> None:
        """__all__ lists no name the package lacks."""
        assert [] == [name for name in schema.__all__ if not hasattr(schema, name)]

    def test_topics_and_limits(self) -> None:
        """The topic names and the size limit are the agreed values."""
        assert (
            1,
            "sensor-data",
            "sensor-aggregates",
            "sensor-alerts",
            "sensor-data.dlq",
            65536,
        ) == (
            schema.SCHEMA_VERSION,
            schema.INPUT_TOPIC,
            schema.AGGREGATES_TOPIC,
            schema.ALERTS_TOPIC,
            schema.DLQ_TOPIC,
            schema.MAX_EVENT_BYTES,
        )
