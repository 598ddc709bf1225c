"""The event contract of Sensorstream: what travels on each topic, and its codecs.

Both services import this package and nothing else to agree on the wire format.
It has no I/O, no logging and no Kafka client: only value objects, encoders,
decoders and the exception tree. ``decode_reading`` is on the per-event hot path.

The JSON Schema ``shared/schema/sensor-reading.v1.schema.json`` documents the input
topic for other languages; a unit test keeps it equal to the constants here.
Unknown extra keys in an event are ignored (forward compatibility).

Legacy v0 payloads, the kafka-python tutorial simulator's format
``{"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}``
(no ``schema_version``, integer sensor id, integer epoch *seconds*), are upgraded on
decode: ``sensor_id`` "sensor-0007", ``event_time`` = timestamp * 1000, ``seq`` None,
``event_id`` a uuid5 of the raw bytes (a replay keeps its id), ``schema_version`` 0.
Such readings have no v1 wire form: ``encode_reading`` refuses them.
"""

from ._constants import (
    AGGREGATES_TOPIC,
    ALERTS_TOPIC,
    DLQ_TOPIC,
    EVENT_ID_PATTERN,
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    INPUT_TOPIC,
    LEGACY_EVENT_ID_NAMESPACE,
    LEGACY_SCHEMA_VERSION,
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    SENSOR_ID_PATTERN,
    SEQ_RANGE,
    TEMPERATURE_RANGE,
)
from ._dead_letter import DeadLetterHeaders, DeadLetterReason
from ._errors import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    PoisonEventError,
    RecordTooLargeError,
    RetriableError,
    RetriesExhaustedError,
    SecurityError,
    SensorstreamError,
)
from ._models import Alert, AlertKind, SensorReading, WindowAggregate
from ._outputs import decode_aggregate, decode_alert, encode_aggregate, encode_alert
from ._reading import decode_reading, encode_reading, parse_reading
from ._rejection import Rejection, RejectReason
from ._topology import TOPOLOGY, TopicRole, TopicSpec, Topology, min_insync_replicas

__all__ = [
    "AGGREGATES_TOPIC",
    "ALERTS_TOPIC",
    "DLQ_TOPIC",
    "EVENT_ID_PATTERN",
    "EVENT_TIME_RANGE",
    "HUMIDITY_RANGE",
    "INPUT_TOPIC",
    "LEGACY_EVENT_ID_NAMESPACE",
    "LEGACY_SCHEMA_VERSION",
    "MAX_EVENT_BYTES",
    "SCHEMA_VERSION",
    "SENSOR_ID_PATTERN",
    "SEQ_RANGE",
    "TEMPERATURE_RANGE",
    "TOPOLOGY",
    "Alert",
    "AlertKind",
    "ConfigError",
    "DeadLetterHeaders",
    "DeadLetterReason",
    "FatalError",
    "OwnershipLostError",
    "PoisonEventError",
    "RecordTooLargeError",
    "RejectReason",
    "Rejection",
    "RetriableError",
    "RetriesExhaustedError",
    "SecurityError",
    "SensorReading",
    "SensorstreamError",
    "TopicRole",
    "TopicSpec",
    "Topology",
    "WindowAggregate",
    "decode_aggregate",
    "decode_alert",
    "decode_reading",
    "encode_aggregate",
    "encode_alert",
    "encode_reading",
    "min_insync_replicas",
    "parse_reading",
]
