"""decode_reading accepts exactly the v1 contract and never raises; its two tiers agree."""

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
from sensorstream.schema._reading import READING_FIELDS, decode_reading_slow
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

# Spellings that only the fast tier's JSON parser (msgspec) could read differently from
# orjson: numbers, escapes, raw bytes, nesting, duplicates and unknown keys.
json_number_texts = st.from_regex(
    r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?", fullmatch=True
)
event_id_texts = st.uuids().map(str) | st.from_regex(r"[0-9a-fA-Fg -]{34,38}", fullmatch=True)
raw_bytes = st.sampled_from(
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\x01", b"\\",
     b'"', b"\\ud800", b"\\u0041", b"\\n", b" ", b"\t", b"\x0b", b"{", b"}", b"[", b",", b":",
     b"-", b".", b"e", b"0", b"1e400", b"NaN", b"\xef\xbb\xbf"]
)  # fmt: skip
json_extras = st.dictionaries(
    st.sampled_from(["seq", "x", "", "firmware", "temperature"]), json_values, max_size=2
)


def with_raw_value(field: str, raw: str) -> bytes:
    """A valid event whose ``field`` holds the JSON text ``raw`` verbatim."""
    return valid_payload(**{field: 0}).replace(f'"{field}":0'.encode(), f'"{field}":{raw}'.encode())


def assert_tiers_agree(payload: bytes) -> None:
    """decode_reading (fast tier first) gives exactly what the slow tier alone gives."""
    expected = decode_reading_slow(payload)
    actual = decode_reading(payload)
    assert (expected, repr(expected)) == (actual, repr(actual))  # repr: -0.0 is not 0.0


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


class TestDecodeReadingTiers:
    def test_a_plain_valid_event_never_reaches_the_slow_tier(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The seven v1 keys with valid values are decoded by the msgspec tier alone."""

        def refuse(data: object) -> object:
            raise AssertionError("slow tier used")

        monkeypatch.setattr("sensorstream.schema._reading.decode_reading_slow", refuse)

        assert READING == decode_reading(encode_reading(READING))

    @pytest.mark.parametrize(
        "payload",
        [
            valid_payload(firmware="2.1"),
            valid_payload(temperature=500.0),
            bytearray(valid_payload()),
            b'{"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}',
        ],
        ids=["extra-key", "out-of-range", "bytearray", "legacy-v0"],
    )
    def test_everything_else_is_left_to_the_slow_tier(
        self, monkeypatch: pytest.MonkeyPatch, payload: bytes
    ) -> None:
        """Extra keys, bad values, other buffers and v0 events are the slow tier's to judge."""
        calls = []

        def record(data: object) -> Rejection:
            calls.append(data)
            return Rejection(RejectReason.EMPTY, "stub")

        monkeypatch.setattr("sensorstream.schema._reading.decode_reading_slow", record)

        decode_reading(payload)

        assert [payload] == calls

    @pytest.mark.parametrize(
        "payload",
        [
            valid_payload()[:-1] + b',"x":"\xff"}',  # msgspec skims skipped strings
            valid_payload()[:-1] + b',"\xc0\xaf":1}',
            valid_payload()[:-1] + b',"x":1e400}',  # and skipped numbers
            valid_payload()[:-1] + b',"x":' + b"9" * 400 + b"}",
            valid_payload()[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
            valid_payload(seq=[]).replace(b"[]", b"[" * 3000 + b"]" * 3000),
            valid_payload().replace(b'"seq":41', b'"seq":1,"seq":41'),
            valid_payload().replace(b'"seq":41', b'"seq":-1,"seq":41'),
            valid_payload().replace(b'"seq":41', b'"seq":41,"seq":-1'),
            valid_payload().replace(b'"seq"', b'"\\u0073eq"'),
            valid_payload(seq=None),
            valid_payload(seq=2**63),
            valid_payload(seq=2**64 - 1),
            with_raw_value("seq", "18446744073709551616"),
            with_raw_value("seq", "41.0"),
            with_raw_value("seq", "-0"),
            with_raw_value("temperature", "-0"),
            with_raw_value("temperature", "1e-400"),
            with_raw_value("temperature", "200.0000000000000000001"),
            with_raw_value("temperature", "200.00000000000003"),
            with_raw_value("temperature", "2E1"),
            with_raw_value("schema_version", "1.0"),
            with_raw_value("schema_version", "true"),
            valid_payload(event_id="0B6D3C1E-8F7A-4C2B-9D5E-1A2B3C4D5E6F"),
            valid_payload(event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6\n"),
            valid_payload(event_id="0b6d3c1e8-f7a-4c2b-9d5e-1a2b3c4d5e6f"),
            valid_payload(event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6\u00e9"),
            valid_payload(sensor_id="sensor-0007\n"),
            valid_payload(sensor_id="a" * 65),
            valid_payload(sensor_id=""),
            valid_payload() + b" \n\t\r",
            b"\xef\xbb\xbf" + valid_payload(),
            valid_payload() + b"\x00",
        ],
    )
    def test_tiers_agree_on_spellings_where_parsers_differ(self, payload: bytes) -> None:
        """Skipped junk, duplicates, escapes, number spellings and edge values: same result."""
        assert_tiers_agree(payload)

    @settings(max_examples=500)
    @given(near_valid_objects, json_extras)
    def test_tiers_agree_on_objects_near_the_valid_shape(
        self, obj: dict[str, object], extras: dict[str, object]
    ) -> None:
        """For any JSON object near the v1 shape, both tiers give the same result."""
        assert_tiers_agree(json.dumps(obj).encode())
        assert_tiers_agree(json.dumps({**obj, **extras}).encode())

    @settings(max_examples=300)
    @given(
        st.sampled_from(["seq", "event_time", "temperature", "humidity", "schema_version"]),
        json_number_texts,
    )
    def test_tiers_agree_on_every_number_spelling(self, field: str, number: str) -> None:
        """Leading minus, fractions, exponents and long mantissas read the same in both tiers."""
        assert_tiers_agree(with_raw_value(field, number))

    @settings(max_examples=300)
    @given(event_id_texts, st.from_regex(r"[A-Za-z0-9._:\- \n]{0,66}", fullmatch=True))
    def test_tiers_agree_on_identifiers(self, event_id: str, sensor_id: str) -> None:
        """The fast tier's unrolled event_id check and the sensor_id check match the patterns."""
        assert_tiers_agree(valid_payload(event_id=event_id, sensor_id=sensor_id))

    @settings(max_examples=500)
    @given(st.data())
    def test_tiers_agree_on_byte_level_damage(self, data: st.DataObject) -> None:
        """Any byte of a valid event replaced, or junk inserted anywhere: same result."""
        payload = bytearray(valid_payload())
        at = data.draw(st.integers(0, len(payload)))
        junk = data.draw(raw_bytes | st.binary(min_size=1, max_size=3))
        if data.draw(st.booleans()) and at < len(payload):
            payload[at : at + 1] = junk
        else:
            payload[at:at] = junk

        assert_tiers_agree(bytes(payload))


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
