"""decode_reading accepts exactly the v1 contract and never raises."""

import dataclasses
import json
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorstream.schema import (
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    SEQ_RANGE,
    TEMPERATURE_RANGE,
    PoisonEventError,
    Rejection,
    RejectReason,
    SensorReading,
    decode_reading,
    encode_reading,
    parse_reading,
)
from sensorstream.schema._fields import check_fields
from sensorstream.schema._reading import READING_FIELDS
from sensorstream.schema.testing import malformed_corpus, readings, valid_payload

READING = SensorReading(
    schema_version=1,
    event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
    sensor_id="sensor-0007",
    seq=41,
    event_time=1_700_000_000_123,
    temperature=22.5,
    humidity=40.1,
)

# Written with the stdlib: orjson.dumps refuses integers beyond 64 bits, a decoder must not.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
field_values: st.SearchStrategy[object] = (
    st.sampled_from([None, True, 0, -1, 1.5, 1e300, "", "x", [], {}]) | json_values
)
near_valid_objects = st.fixed_dictionaries(
    {},
    optional={
        "schema_version": st.just(1) | field_values,
        "event_id": st.uuids().map(str) | field_values,
        "sensor_id": st.from_regex(r"[A-Za-z0-9._:-]{1,70}", fullmatch=True) | field_values,
        "seq": st.integers(min_value=-2, max_value=2**64) | field_values,
        "event_time": st.integers(EVENT_TIME_RANGE[0] - 2, EVENT_TIME_RANGE[1] + 2) | field_values,
        "temperature": st.floats(-101.0, 201.0) | field_values,
        "humidity": st.floats(-1.0, 101.0) | field_values,
    },
)


class TestEncodeReading:
    def test_writes_compact_json_with_exactly_the_v1_keys_in_order(self) -> None:
        """The wire form is the seven fields, in declaration order."""
        assert (
            b'{"schema_version":1,"event_id":"0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",'
            b'"sensor_id":"sensor-0007","seq":41,"event_time":1700000000123,'
            b'"temperature":22.5,"humidity":40.1}'
        ) == encode_reading(READING)

    def test_refuses_an_upgraded_v0_reading(self) -> None:
        """A v0 reading has no seq and so no v1 wire form: ValueError says what to do."""
        legacy = dataclasses.replace(READING, schema_version=0, seq=None)

        with pytest.raises(ValueError, match="forward the original payload bytes"):
            encode_reading(legacy)


class TestDecodeReading:
    def test_round_trips_a_reading(self) -> None:
        """decode(encode(r)) == r."""
        assert READING == decode_reading(encode_reading(READING))

    @given(readings())
    def test_round_trips_every_valid_reading(self, reading: SensorReading) -> None:
        """Any reading the strategy builds survives encode and decode unchanged."""
        assert reading == decode_reading(encode_reading(reading))

    @pytest.mark.parametrize(
        ("reason", "payload"),
        malformed_corpus(),
        ids=[f"{reason}-{i}" for i, (reason, _) in enumerate(malformed_corpus())],
    )
    def test_rejects_the_malformed_corpus_with_the_expected_reason(
        self, reason: RejectReason, payload: bytes
    ) -> None:
        """Each corpus payload is refused with its listed reason."""
        result = decode_reading(payload)

        assert isinstance(result, Rejection)
        assert reason == result.reason

    def test_corpus_covers_every_reject_reason(self) -> None:
        """No reason code is left without a payload that produces it."""
        assert set(RejectReason) == {reason for reason, _ in malformed_corpus()}

    def test_none_is_empty(self) -> None:
        """A Kafka tombstone decodes to an empty rejection."""
        result = decode_reading(None)

        assert isinstance(result, Rejection)
        assert RejectReason.EMPTY == result.reason

    def test_out_of_range_message_names_field_value_and_range(self) -> None:
        """The message says which field, which value, and what would be right."""
        result = decode_reading(valid_payload(temperature=500.0))

        assert (
            Rejection(RejectReason.OUT_OF_RANGE, "temperature: 500.0 is out of range -100.0..200.0")
            == result
        )

    def test_unknown_keys_are_ignored(self) -> None:
        """Forward compatibility: a newer producer's extra field does not break us."""
        assert READING == decode_reading(valid_payload(firmware="2.1", battery=0.93))

    def test_integers_are_accepted_as_floats(self) -> None:
        """temperature 22 on the wire reads as 22.0, a float."""
        result = decode_reading(valid_payload(temperature=22, humidity=40))

        assert isinstance(result, SensorReading)
        assert (22.0, float, 40.0, float) == (
            result.temperature,
            type(result.temperature),
            result.humidity,
            type(result.humidity),
        )

    @pytest.mark.parametrize(
        ("field", "bounds"),
        [
            ("seq", SEQ_RANGE),
            ("event_time", EVENT_TIME_RANGE),
            ("temperature", TEMPERATURE_RANGE),
            ("humidity", HUMIDITY_RANGE),
        ],
    )
    def test_range_ends_are_inclusive(self, field: str, bounds: tuple[float, float]) -> None:
        """Both ends of every range are valid values."""
        results = [decode_reading(valid_payload(**{field: end})) for end in bounds]

        assert [SensorReading, SensorReading] == [type(r) for r in results]

    @pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
    def test_accepts_every_buffer_kind(self, wrap: type) -> None:
        """Whatever buffer the Kafka client hands over, the result is the same."""
        assert READING == decode_reading(wrap(encode_reading(READING)))

    def test_decodes_what_the_stdlib_json_writes(self) -> None:
        """Spacing and key order do not matter."""
        text = json.dumps(dict(reversed(orjson.loads(valid_payload()).items())), indent=2)

        assert READING == decode_reading(text.encode())

    def test_duplicate_keys_keep_the_last_value(self) -> None:
        """As in every mainstream JSON parser, the last duplicate wins."""
        payload = valid_payload().replace(b'"seq":41', b'"seq":1,"seq":41')

        assert READING == decode_reading(payload)

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_never_raises_on_arbitrary_bytes(self, data: bytes) -> None:
        """Any bytes give a SensorReading or a Rejection, never an exception."""
        assert isinstance(decode_reading(data), SensorReading | Rejection)

    @settings(max_examples=300)
    @given(json_values)
    def test_never_raises_on_arbitrary_json(self, value: object) -> None:
        """Any JSON value gives a SensorReading or a Rejection, never an exception."""
        assert isinstance(decode_reading(json.dumps(value).encode()), SensorReading | Rejection)

    @settings(max_examples=500)
    @given(near_valid_objects)
    def test_fast_path_agrees_with_the_field_specs(self, obj: dict[str, object]) -> None:
        """The inlined hot-path checks accept exactly what READING_FIELDS accepts."""
        payload = json.dumps(obj).encode()
        parsed = orjson.loads(payload)  # what the decoder sees: huge integers become floats

        result = decode_reading(payload)

        if parsed.get("schema_version") == 1 and type(parsed.get("schema_version")) is int:
            explained = check_fields(parsed, READING_FIELDS)
            assert (explained is None) == isinstance(result, SensorReading)
            assert explained is None or explained == result
        else:
            assert isinstance(result, Rejection)

    def test_never_raises_on_unexpected_exceptions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Even a bug below the boundary becomes a Rejection, not a crashed worker."""

        def explode(data: object) -> object:
            raise KeyError("boom")

        monkeypatch.setattr("sensorstream.schema._reading.load_object", explode)

        assert RejectReason.NOT_JSON == decode_reading(b"{}").reason  # type: ignore[union-attr]

    def test_recursion_errors_are_too_deep(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A RecursionError anywhere inside maps to too_deep."""

        def recurse(data: object) -> object:
            raise RecursionError("maximum recursion depth exceeded")

        monkeypatch.setattr("sensorstream.schema._reading.load_object", recurse)

        assert RejectReason.TOO_DEEP == decode_reading(b"{}").reason  # type: ignore[union-attr]

    def test_decoded_reading_is_a_true_frozen_sensor_reading(self) -> None:
        """The fast path's cheap construction yields the real, immutable class."""
        result = decode_reading(encode_reading(READING))

        assert SensorReading is type(result)
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.seq = 0  # type: ignore[misc]

    def test_event_ids_are_canonical_uuids(self) -> None:
        """A decoded event_id parses as a UUID and prints back identically."""
        result = decode_reading(valid_payload())

        assert isinstance(result, SensorReading)
        assert result.event_id == str(uuid.UUID(result.event_id))


class TestParseReading:
    def test_returns_the_reading(self) -> None:
        """A valid payload gives the same reading as decode_reading."""
        assert READING == parse_reading(encode_reading(READING))

    def test_raises_poison_with_the_rejection(self) -> None:
        """A bad payload raises PoisonEventError carrying decode_reading's Rejection."""
        payload = valid_payload(humidity=101)

        with pytest.raises(PoisonEventError) as caught:
            parse_reading(payload)

        assert decode_reading(payload) == caught.value.rejection
