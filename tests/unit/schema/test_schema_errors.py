"""The exception tree separates poison, retriable and fatal failures."""

import pytest

from sensorstream.schema import (
    ConfigError,
    FatalError,
    PoisonEventError,
    Rejection,
    RejectReason,
    RetriableError,
    SensorstreamError,
)


class TestExceptionTree:
    @pytest.mark.parametrize("cls", [PoisonEventError, RetriableError, FatalError, ConfigError])
    def test_everything_is_a_sensorstream_error(self, cls: type[Exception]) -> None:
        """One `except SensorstreamError` catches every deliberate failure."""
        assert issubclass(cls, SensorstreamError)

    def test_config_error_is_fatal(self) -> None:
        """A bad setting ends the process: ConfigError is a FatalError."""
        assert issubclass(ConfigError, FatalError)

    def test_the_three_branches_are_disjoint(self) -> None:
        """Poison, retriable and fatal never overlap."""
        branches = [PoisonEventError, RetriableError, FatalError]

        assert [] == [(a, b) for a in branches for b in branches if a is not b and issubclass(a, b)]


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
