"""Dead letters of MQTT payloads: the processor's headers, filled honestly for MQTT."""

from __future__ import annotations

import hashlib

import pytest

from sensorstream.bridge import MQTT_TOPIC_HEADER
from sensorstream.bridge._dead_letters import DeadLetterBuilder
from sensorstream.schema import DeadLetterHeaders, DeadLetterReason, Rejection, decode_reading


def _rejection(payload: bytes) -> Rejection:
    decoded = decode_reading(payload)
    assert isinstance(decoded, Rejection)
    return decoded


class TestDeadLetterBuilder:
    def test_headers_name_the_mqtt_origin_and_no_kafka_position(self) -> None:
        """Reason and error from the decoder; origin mqtt:<topic>, partition and offset -1,
        the receive time and the instance; the MQTT topic in a header of its own."""
        builder = DeadLetterBuilder(instance="bridge-1", max_bytes=1_000_000)
        payload = b'{"poison": 1'
        letter = builder.letter(payload, "sensors/s-1/readings", _rejection(payload), 1234)
        headers = DeadLetterHeaders.from_kafka_headers(letter.headers)
        assert (
            DeadLetterReason.NOT_JSON,
            "mqtt:sensors/s-1/readings",
            -1,
            -1,
            1234,
            "bridge-1",
        ) == (
            headers.reason,
            headers.original_topic,
            headers.original_partition,
            headers.original_offset,
            headers.original_timestamp,
            headers.instance,
        )
        assert b"sensors/s-1/readings" == dict(letter.headers)[MQTT_TOPIC_HEADER]
        assert (payload, False) == (letter.value, letter.truncated)

    def test_a_payload_too_large_is_cut_with_its_size_and_hash(self) -> None:
        """A letter never exceeds max_bytes; its headers keep the original size and SHA-256."""
        builder = DeadLetterBuilder(instance="bridge-1", max_bytes=8192)
        payload = b"x" * 100_000
        letter = builder.letter(payload, "t", _rejection(payload), 0)
        headers = DeadLetterHeaders.from_kafka_headers(letter.headers)
        size = len(letter.value) + sum(len(k) + len(v) for k, v in letter.headers)
        assert letter.truncated
        assert size <= 8192
        assert (DeadLetterReason.TOO_LARGE, 100_000, hashlib.sha256(payload).hexdigest()) == (
            headers.reason,
            headers.original_size,
            headers.sha256,
        )

    def test_a_tiny_limit_is_refused(self) -> None:
        """Under 4096 bytes a DLQ cannot hold the headers: a setting error, not a crash later."""
        with pytest.raises(ValueError, match="4096"):
            DeadLetterBuilder(instance="b", max_bytes=1000)
