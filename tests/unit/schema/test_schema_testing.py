"""The test helpers other suites reuse are themselves correct."""

from hypothesis import given

from sensorstream.schema import MAX_EVENT_BYTES, RejectReason, SensorReading, decode_reading
from sensorstream.schema.testing import malformed_corpus, readings, valid_payload


class TestMalformedCorpus:
    def test_has_a_payload_for_every_reason(self) -> None:
        """Each RejectReason appears at least once."""
        assert set(RejectReason) == {reason for reason, _ in malformed_corpus()}

    def test_holds_the_extremes(self) -> None:
        """A 1 MiB value, 100000 levels of '[' and the empty value are included."""
        payloads = [payload for _, payload in malformed_corpus()]

        assert [True, True, True] == [
            any(len(p) > 1024 * 1024 for p in payloads),
            b"[" * 100_000 in payloads,
            b"" in payloads,
        ]

    def test_is_the_same_every_call(self) -> None:
        """Deterministic, so a failure can be reproduced."""
        assert malformed_corpus() == malformed_corpus()

    def test_every_payload_is_bytes(self) -> None:
        """Ready to hand to a Kafka producer as a value."""
        assert {bytes} == {type(payload) for _, payload in malformed_corpus()}


class TestValidPayload:
    def test_decodes(self) -> None:
        """The default payload is a valid v1 event of realistic size."""
        payload = valid_payload()

        assert isinstance(decode_reading(payload), SensorReading)
        assert 150 < len(payload) < 250 < MAX_EVENT_BYTES

    def test_ellipsis_removes_a_field(self) -> None:
        """valid_payload(seq=...) leaves the key out."""
        assert b'"seq"' not in valid_payload(seq=...)


class TestReadings:
    @given(readings())
    def test_builds_only_valid_v1_readings(self, reading: SensorReading) -> None:
        """Every generated reading has schema_version 1 and a seq."""
        assert (1, False) == (reading.schema_version, reading.seq is None)
