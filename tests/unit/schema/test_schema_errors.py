"""The exception tree separates poison, retriable, lost-ownership and fatal failures."""

import pytest

from sensorstream.schema import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    PoisonEventError,
    RecordTooLargeError,
    Rejection,
    RejectReason,
    RetriableError,
    RetriesExhaustedError,
    SensorstreamError,
)

BRANCHES = [PoisonEventError, RetriableError, OwnershipLostError, FatalError]
FATAL_KINDS = [ConfigError, RecordTooLargeError, RetriesExhaustedError]


class TestExceptionTree:
    @pytest.mark.parametrize("cls", BRANCHES + FATAL_KINDS)
    def test_everything_is_a_sensorstream_error(self, cls: type[Exception]) -> None:
        """One `except SensorstreamError` catches every deliberate failure."""
        assert issubclass(cls, SensorstreamError)

    @pytest.mark.parametrize("cls", FATAL_KINDS)
    def test_the_fatal_kinds_are_fatal_errors(self, cls: type[Exception]) -> None:
        """A bad setting, an oversized record and spent retries all end the process."""
        assert issubclass(cls, FatalError)

    def test_the_four_branches_are_pairwise_disjoint(self) -> None:
        """Poison, retriable, ownership lost and fatal never overlap."""
        assert [] == [(a, b) for a in BRANCHES for b in BRANCHES if a is not b and issubclass(a, b)]

    @pytest.mark.parametrize("cls", FATAL_KINDS)
    def test_no_fatal_kind_is_retriable(self, cls: type[Exception]) -> None:
        """A retry policy on RetriableError never retries a fatal failure."""
        assert not issubclass(cls, RetriableError | OwnershipLostError | PoisonEventError)

    def test_every_branch_and_fatal_kind_is_named_in_the_module_docstring(self) -> None:
        """The drawn tree lists every class, so it cannot drift from the code."""
        import sensorstream.schema._errors as errors_module

        doc = errors_module.__doc__ or ""

        assert [] == [cls.__name__ for cls in BRANCHES + FATAL_KINDS if cls.__name__ not in doc]


class TestPoisonEventError:
    def test_carries_the_rejection_and_its_reason(self) -> None:
        """The DLQ writer reads .rejection and .reason off the exception."""
        rejection = Rejection(RejectReason.OUT_OF_RANGE, "humidity: 101.0 is out of range")

        error = PoisonEventError(rejection)

        assert (rejection, RejectReason.OUT_OF_RANGE) == (error.rejection, error.reason)

    def test_message_states_reason_and_detail(self) -> None:
        """str() reads as '<reason>: <message>'."""
        error = PoisonEventError(Rejection(RejectReason.EMPTY, "value: empty"))

        assert "empty: value: empty" == str(error)
