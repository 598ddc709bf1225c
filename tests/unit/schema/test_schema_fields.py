"""check_fields explains the first broken field of a wire object."""

import math

import pytest

from sensorstream.schema import Rejection, RejectReason
from sensorstream.schema._fields import FieldSpec, check_fields, json_type_name

SPECS = (
    FieldSpec(name="name", kind="string", matches=str.isalpha, must_be="letters only"),
    FieldSpec(name="count", kind="integer", bounds=(0, 10)),
    FieldSpec(name="ratio", kind="number", bounds=(0.0, 1.0)),
    FieldSpec(name="parent", kind="integer", nullable=True),
)
GOOD = {"name": "abc", "count": 3, "ratio": 0.5, "parent": None}


class TestCheckFields:
    def test_valid_object_passes(self) -> None:
        """Nothing to explain: None."""
        assert check_fields(GOOD, SPECS) is None

    def test_reports_the_first_broken_field_in_spec_order(self) -> None:
        """With two bad fields, the earlier one in the spec is named."""
        result = check_fields({**GOOD, "count": -1, "name": "a1"}, SPECS)

        assert Rejection(RejectReason.OUT_OF_RANGE, "name: 'a1' is not letters only") == result

    @pytest.mark.parametrize(
        ("changes", "expected"),
        [
            (
                {"count": ...},
                Rejection(RejectReason.MISSING_FIELD, "count: required field is missing"),
            ),
            (
                {"count": None},
                Rejection(RejectReason.WRONG_TYPE, "count: expected integer, got null"),
            ),
            (
                {"count": True},
                Rejection(RejectReason.WRONG_TYPE, "count: expected integer, got boolean true"),
            ),
            (
                {"count": 2.0},
                Rejection(RejectReason.WRONG_TYPE, "count: expected integer, got number 2.0"),
            ),
            (
                {"count": 11},
                Rejection(RejectReason.OUT_OF_RANGE, "count: 11 is out of range 0..10"),
            ),
            (
                {"ratio": math.inf},
                Rejection(RejectReason.NOT_FINITE, "ratio: inf is not a finite number"),
            ),
            (
                {"ratio": "0.5"},
                Rejection(RejectReason.WRONG_TYPE, "ratio: expected number, got string '0.5'"),
            ),
            (
                {"name": ["a"]},
                Rejection(RejectReason.WRONG_TYPE, "name: expected string, got array ['a']"),
            ),
        ],
    )
    def test_names_field_reason_and_value(
        self, changes: dict[str, object], expected: Rejection
    ) -> None:
        """Each kind of breakage gives its reason and a message quoting the value."""
        obj = {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}

        assert expected == check_fields(obj, SPECS)

    def test_integers_are_numbers(self) -> None:
        """A JSON integer is a valid number."""
        assert check_fields({**GOOD, "ratio": 1}, SPECS) is None

    def test_nullable_field_takes_null(self) -> None:
        """nullable=True accepts null as well as the kind."""
        assert [None, None] == [
            check_fields({**GOOD, "parent": None}, SPECS),
            check_fields({**GOOD, "parent": 7}, SPECS),
        ]


class TestJsonTypeName:
    def test_names_decoded_values_in_json_terms(self) -> None:
        """Python types read as their JSON names."""
        values: tuple[object, ...] = (True, 1, 1.0, "", [], {}, None)

        assert ["boolean", "integer", "number", "string", "array", "object", "null"] == [
            json_type_name(v) for v in values
        ]
