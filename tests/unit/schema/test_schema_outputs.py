"""Aggregates and alerts round-trip and refuse malformed payloads."""

import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstream.schema import (
    Alert,
    PoisonEventError,
    RejectReason,
    WindowAggregate,
    decode_aggregate,
    decode_alert,
    encode_aggregate,
    encode_alert,
)

AGGREGATE = WindowAggregate(
    sensor_id="sensor-0007",
    window_start=1_700_000_000_000,
    window_end=1_700_000_060_000,
    count=12,
    temperature_min=21.0,
    temperature_max=23.5,
    temperature_mean=22.25,
    humidity_min=39.0,
    humidity_max=41.0,
    humidity_mean=40.0,
    first_seq=30,
    last_seq=41,
)
ALERT = Alert(
    sensor_id="sensor-0007",
    kind="temperature_high",
    value=85.5,
    threshold=80.0,
    event_time=1_700_000_000_123,
    event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
)
finite = st.floats(allow_nan=False, allow_infinity=False)


def reason_of_poison(decode: object, payload: bytes) -> RejectReason:
    with pytest.raises(PoisonEventError) as caught:
        decode(payload)  # type: ignore[operator]
    return caught.value.reason


class TestAggregateCodec:
    def test_round_trips(self) -> None:
        """decode_aggregate(encode_aggregate(a)) == a."""
        assert AGGREGATE == decode_aggregate(encode_aggregate(AGGREGATE))

    @given(first=st.none() | st.integers(0, 2**63 - 1), mean=finite, count=st.integers(1, 10**9))
    def test_round_trips_any_values(self, first: int | None, mean: float, count: int) -> None:
        """Null seqs, any finite statistic and any count survive the trip."""
        aggregate = dataclasses.replace(
            AGGREGATE, first_seq=first, last_seq=first, temperature_mean=mean, count=count
        )

        assert aggregate == decode_aggregate(encode_aggregate(aggregate))

    def test_writes_the_field_names_as_keys(self) -> None:
        """The wire keys are the dataclass fields, in order."""
        assert list(WindowAggregate.__dataclass_fields__) == list(
            orjson.loads(encode_aggregate(AGGREGATE))
        )

    def test_rejects_an_empty_window(self) -> None:
        """window_end must come after window_start."""
        payload = encode_aggregate(
            dataclasses.replace(AGGREGATE, window_end=AGGREGATE.window_start)
        )

        assert RejectReason.OUT_OF_RANGE == reason_of_poison(decode_aggregate, payload)

    def test_rejects_a_missing_statistic(self) -> None:
        """Every statistic is required."""
        fields = orjson.loads(encode_aggregate(AGGREGATE))
        del fields["humidity_mean"]

        assert RejectReason.MISSING_FIELD == reason_of_poison(
            decode_aggregate, orjson.dumps(fields)
        )

    def test_rejects_bytes_that_are_not_json(self) -> None:
        """Parse failures raise PoisonEventError too."""
        assert RejectReason.NOT_JSON == reason_of_poison(decode_aggregate, b"{oops")


class TestAlertCodec:
    def test_round_trips(self) -> None:
        """decode_alert(encode_alert(a)) == a."""
        assert ALERT == decode_alert(encode_alert(ALERT))

    @pytest.mark.parametrize(
        "kind", ["temperature_high", "temperature_low", "humidity_high", "humidity_low"]
    )
    def test_round_trips_every_kind(self, kind: str) -> None:
        """All four alert kinds are accepted."""
        alert = dataclasses.replace(ALERT, kind=kind)  # type: ignore[arg-type]

        assert alert == decode_alert(encode_alert(alert))

    def test_rejects_an_unknown_kind(self) -> None:
        """A kind outside AlertKind is out of range."""
        payload = encode_alert(ALERT).replace(b"temperature_high", b"pressure_high")

        assert RejectReason.OUT_OF_RANGE == reason_of_poison(decode_alert, payload)

    def test_rejects_an_empty_value(self) -> None:
        """A tombstone on the alerts topic is poison, not a crash."""
        assert RejectReason.EMPTY == reason_of_poison(decode_alert, b"")
