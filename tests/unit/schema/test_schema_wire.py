"""load_object turns any Kafka value into a JSON object or a precise Rejection."""

import pytest

from sensorstream.schema import MAX_EVENT_BYTES, Rejection, RejectReason
from sensorstream.schema._wire import load_object


def reason_of(result: object) -> RejectReason | None:
    return result.reason if isinstance(result, Rejection) else None


class TestLoadObject:
    @pytest.mark.parametrize(
        "value", [b'{"a": 1}', bytearray(b'{"a": 1}'), memoryview(b'{"a": 1}')]
    )
    def test_accepts_every_buffer_kind(self, value: bytes | bytearray | memoryview) -> None:
        """bytes, bytearray and memoryview parse alike."""
        assert {"a": 1} == load_object(value)

    def test_none_is_empty(self) -> None:
        """A tombstone (None) is rejected as empty."""
        assert RejectReason.EMPTY == reason_of(load_object(None))

    def test_size_is_checked_before_emptiness_and_parsing(self) -> None:
        """One byte over the limit is too_large, even if it is not JSON."""
        assert RejectReason.TOO_LARGE == reason_of(load_object(b"\xff" * (MAX_EVENT_BYTES + 1)))

    def test_exactly_the_limit_is_parsed(self) -> None:
        """A payload of exactly MAX_EVENT_BYTES is still parsed."""
        body = b'{"p": "' + b"x" * (MAX_EVENT_BYTES - 9) + b'"}'

        assert (MAX_EVENT_BYTES, dict) == (len(body), type(load_object(body)))

    def test_non_bytes_input_is_a_wrong_type(self) -> None:
        """A str or int handed in by mistake is rejected, not raised."""
        assert [RejectReason.WRONG_TYPE] * 2 == [
            reason_of(load_object("{}")),  # type: ignore[arg-type]
            reason_of(load_object(42)),  # type: ignore[arg-type]
        ]

    def test_invalid_utf8_wins_over_syntax_errors(self) -> None:
        """Bad bytes are reported as invalid_utf8 even where the JSON is also broken."""
        assert RejectReason.INVALID_UTF8 == reason_of(load_object(b'{"a": \xff'))

    @pytest.mark.parametrize(
        "value", [b'{"t": NaN}', b'{"t": Infinity}', b'{"t": -Infinity}', b'{"t": +Infinity}']
    )
    def test_non_finite_literals_are_named(self, value: bytes) -> None:
        """NaN and Infinity literals, which orjson calls syntax errors, are not_finite."""
        assert RejectReason.NOT_FINITE == reason_of(load_object(value))

    def test_non_finite_literal_after_multibyte_text_is_found(self) -> None:
        """orjson counts characters, not bytes: the lookup still lands on the literal."""
        value = '{"name": "Küche äöü", "t": NaN}'.encode()

        assert RejectReason.NOT_FINITE == reason_of(load_object(value))

    def test_message_quotes_what_is_near_the_error(self) -> None:
        """The not_json message shows the text around the failure."""
        result = load_object(b'{"a": oops}')

        assert isinstance(result, Rejection)
        assert "'oops}'" in result.message
