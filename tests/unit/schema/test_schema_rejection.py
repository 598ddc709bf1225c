"""Rejections carry a bounded reason and a short human message."""

from sensorstream.schema import RejectReason
from sensorstream.schema._rejection import shown


class TestRejectReason:
    def test_wire_values_are_the_lowercase_names(self) -> None:
        """Each reason's string value is its name in lower case."""
        assert [r.name.lower() for r in RejectReason] == [r.value for r in RejectReason]

    def test_compares_equal_to_its_string(self) -> None:
        """A StrEnum: usable directly as a metric label or header value."""
        assert "too_large" == f"{RejectReason.TOO_LARGE}"


class TestShown:
    def test_quotes_short_values_as_repr(self) -> None:
        """Strings keep their quotes, so whitespace is visible."""
        assert "'sensor 7'" == shown("sensor 7")

    def test_spells_json_literals_the_json_way(self) -> None:
        """null, true and false read as in the payload."""
        assert ["null", "true", "false"] == [shown(None), shown(True), shown(False)]

    def test_truncates_long_values_and_says_how_long(self) -> None:
        """A huge value becomes 60 characters plus its full length."""
        assert f"'{'x' * 59}... (1002 chars)" == shown("x" * 1000)
