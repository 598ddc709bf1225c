"""The JSON Schema file and the decoder's constants describe the same contract."""

import json
from pathlib import Path
from typing import Any

import pytest

from sensorstream.schema import (
    EVENT_ID_PATTERN,
    EVENT_TIME_RANGE,
    HUMIDITY_RANGE,
    SCHEMA_VERSION,
    SENSOR_ID_PATTERN,
    SEQ_RANGE,
    TEMPERATURE_RANGE,
    SensorReading,
)
from sensorstream.schema._constants import is_event_id, is_sensor_id

SCHEMA_FILE = Path(__file__).parents[3] / "shared" / "schema" / "sensor-reading.v1.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


class TestJsonSchemaFile:
    def test_is_draft_2020_12(self, schema: dict[str, Any]) -> None:
        """The file declares JSON Schema draft 2020-12."""
        assert "https://json-schema.org/draft/2020-12/schema" == schema["$schema"]

    def test_properties_are_the_model_fields(self, schema: dict[str, Any]) -> None:
        """Every SensorReading field, and nothing else, is a property, in wire order."""
        assert list(SensorReading.__dataclass_fields__) == list(schema["properties"])

    def test_every_field_is_required(self, schema: dict[str, Any]) -> None:
        """All seven fields are required."""
        assert list(SensorReading.__dataclass_fields__) == schema["required"]

    def test_extra_keys_are_allowed(self, schema: dict[str, Any]) -> None:
        """Unknown keys are tolerated, as the decoder ignores them."""
        assert schema["additionalProperties"] is True

    def test_every_field_has_a_description(self, schema: dict[str, Any]) -> None:
        """Each property says what it means."""
        assert [] == [name for name, p in schema["properties"].items() if not p.get("description")]

    @pytest.mark.parametrize(
        ("field", "json_type", "bounds"),
        [
            ("seq", "integer", SEQ_RANGE),
            ("event_time", "integer", EVENT_TIME_RANGE),
            ("temperature", "number", TEMPERATURE_RANGE),
            ("humidity", "number", HUMIDITY_RANGE),
        ],
    )
    def test_numeric_ranges_match_the_code(
        self, schema: dict[str, Any], field: str, json_type: str, bounds: tuple[float, float]
    ) -> None:
        """Type, minimum and maximum equal the decoder's constants."""
        prop = schema["properties"][field]

        assert (json_type, *bounds) == (prop["type"], prop["minimum"], prop["maximum"])

    @pytest.mark.parametrize(
        ("field", "pattern"), [("event_id", EVENT_ID_PATTERN), ("sensor_id", SENSOR_ID_PATTERN)]
    )
    def test_string_patterns_match_the_code(
        self, schema: dict[str, Any], field: str, pattern: str
    ) -> None:
        """String fields use the decoder's patterns."""
        assert ("string", pattern) == (
            schema["properties"][field]["type"],
            schema["properties"][field]["pattern"],
        )

    def test_schema_version_is_the_current_one(self, schema: dict[str, Any]) -> None:
        """The schema pins schema_version to SCHEMA_VERSION."""
        assert SCHEMA_VERSION == schema["properties"]["schema_version"]["const"]

    def test_example_passes_the_patterns_and_ranges(self, schema: dict[str, Any]) -> None:
        """The documented example is itself a valid event."""
        from sensorstream.schema import decode_reading

        example = json.dumps(schema["examples"][0]).encode()

        assert isinstance(decode_reading(example), SensorReading)


class TestPatterns:
    def test_event_id_accepts_a_canonical_uuid(self) -> None:
        """A lowercase uuid4 string matches."""
        assert is_event_id("0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f")

    @pytest.mark.parametrize(
        "text",
        [
            "0B6D3C1E-8F7A-4C2B-9D5E-1A2B3C4D5E6F",
            "0b6d3c1e8f7a4c2b9d5e1a2b3c4d5e6f",
            "{0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f}",
            "0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f\n",
        ],
    )
    def test_event_id_refuses_other_spellings(self, text: str) -> None:
        """Upper case, braces, no dashes and a trailing newline do not match."""
        assert not is_event_id(text)

    @pytest.mark.parametrize("text", ["", "sensor 7", "s" * 65, "sensor-7\n", "sensör"])
    def test_sensor_id_refuses_unsafe_text(self, text: str) -> None:
        """Empty, spaces, over 64 chars, newlines and non-ASCII do not match."""
        assert not is_sensor_id(text)

    @pytest.mark.parametrize("text", ["sensor-0007", "a", "plant.3:line_2-x", "s" * 64])
    def test_sensor_id_accepts_safe_text(self, text: str) -> None:
        """1..64 characters of A-Za-z0-9._:- match."""
        assert is_sensor_id(text)
