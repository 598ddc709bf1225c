"""Dead letters of MQTT payloads: the payload, why it was refused, and where it came from.

The reason codes and the ``sensorstream.dlq.*`` headers are the processor's
(:class:`~sensorstream.schema.DeadLetterHeaders`), so ``sensorstream dlq list | show |
replay`` read a bridge's letters like any other. What differs is honest about MQTT:

- ``sensorstream.dlq.topic`` is ``mqtt:<MQTT topic>``: the letter's origin is an MQTT topic,
  never a Kafka one (a Kafka topic name has no ``/``, and no Kafka topic is called
  ``mqtt:...``). Tools that count a Kafka topic's dead letters by their origin (the
  audit) therefore leave them out, as they should: the payload never was in that topic.
- ``sensorstream.dlq.partition`` and ``sensorstream.dlq.offset`` are ``-1``: the payload
  never had a Kafka position (Kafka's own "no offset").
- ``sensorstream.dlq.timestamp`` is when the bridge received it (epoch ms): MQTT
  messages carry no timestamp of their own.
- ``sensorstream.dlq.instance`` is the bridge instance.
- ``sensorstream.mqtt.topic`` (:data:`MQTT_TOPIC_HEADER`) is the MQTT topic exactly. It is
  not one of ``sensorstream.dlq.*``, so a replay keeps it on the record it puts back.

The key is empty (an MQTT message has none, and a refused payload has no trustworthy
sensor id). A payload too large for ``max_bytes`` is cut to fit, with its original size
and SHA-256 in the headers, as the processor does: a letter is never dropped for size.

Pure: no Kafka, no clock, no logging.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from sensorstream.schema import DeadLetterHeaders, DeadLetterReason, Rejection

__all__ = [
    "MQTT_ORIGIN_PREFIX",
    "MQTT_TOPIC_HEADER",
    "NO_POSITION",
    "DeadLetter",
    "DeadLetterBuilder",
]

MQTT_TOPIC_HEADER: Final = "sensorstream.mqtt.topic"
MQTT_ORIGIN_PREFIX: Final = "mqtt:"
NO_POSITION: Final = -1
_MARGIN: Final = 1024
"""Room for the record's framing and the headers' varints, which the estimate skips."""


@dataclass(slots=True)
class DeadLetter:
    """One dead-letter record to produce."""

    reason: DeadLetterReason
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    truncated: bool = False


class DeadLetterBuilder:
    """Builds the dead letters of one bridge: its instance name and the DLQ's size limit."""

    def __init__(self, *, instance: str, max_bytes: int) -> None:
        if max_bytes < 4096:
            raise ValueError(
                f"a DLQ that takes under 4096 bytes per record is unusable: {max_bytes}"
            )
        self.instance = instance
        self.max_bytes = max_bytes

    def letter(
        self, payload: bytes, mqtt_topic: str, rejection: Rejection, received_ms: int
    ) -> DeadLetter:
        """The dead letter of ``payload``, received on ``mqtt_topic`` (see the module doc)."""
        headers = DeadLetterHeaders(
            reason=DeadLetterReason(rejection.reason),
            error=rejection.message,
            original_topic=MQTT_ORIGIN_PREFIX + mqtt_topic,
            original_partition=NO_POSITION,
            original_offset=NO_POSITION,
            original_timestamp=received_ms,
            instance=self.instance,
        )
        topic_header = (MQTT_TOPIC_HEADER, mqtt_topic.encode())
        rendered = [*headers.to_kafka_headers(), topic_header]
        if _size(payload, rendered) + _MARGIN <= self.max_bytes:
            return DeadLetter(headers.reason, payload, rendered)
        cut = DeadLetterHeaders(
            reason=headers.reason,
            error=headers.error,
            original_topic=headers.original_topic,
            original_partition=NO_POSITION,
            original_offset=NO_POSITION,
            original_timestamp=received_ms,
            instance=self.instance,
            original_size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
        )
        rendered = [*cut.to_kafka_headers(), topic_header]
        room = max(0, self.max_bytes - _MARGIN - _size(b"", rendered))
        return DeadLetter(headers.reason, payload[:room], rendered, truncated=True)


def _size(value: bytes, headers: list[tuple[str, bytes]]) -> int:
    return len(value) + sum(len(name) + len(header) for name, header in headers)
