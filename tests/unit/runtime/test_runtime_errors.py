"""Specification of the one translation of Kafka client errors (sensorstream.runtime.errors)."""

from __future__ import annotations

import inspect

import pytest
from aiokafka import errors as kafka

from sensorstream.runtime.errors import KAFKA_ERRORS, kafka_errors, translate_kafka_error
from sensorstream.schema import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    RecordTooLargeError,
    RetriableError,
    SecurityError,
    SensorstreamError,
)


class UnknownKafkaError(kafka.KafkaError):
    """A client error the table has never heard of, not flagged retriable."""


class UnknownRetriableKafkaError(kafka.KafkaError):
    """A client error the table has never heard of, flagged retriable."""

    retriable = True


class NewerFencing(kafka.ProducerFenced):
    """A future subclass of a tabled error."""


REPRESENTATIVE = [
    (kafka.KafkaConnectionError("Connection at 127.0.0.1:9092 closed"), RetriableError),
    (kafka.NotLeaderForPartitionError(), RetriableError),
    (kafka.RequestTimedOutError(), RetriableError),
    (kafka.KafkaTimeoutError(), RetriableError),
    (kafka.NoBrokersAvailable(), RetriableError),
    (kafka.BrokerNotAvailableError(), RetriableError),
    (kafka.CommitFailedError(), OwnershipLostError),
    (kafka.RebalanceInProgressError(), OwnershipLostError),
    (kafka.ProducerFenced(), OwnershipLostError),
    (kafka.SaslAuthenticationFailed("Authentication failed: invalid credentials"), SecurityError),
    (kafka.UnsupportedSaslMechanismError(), SecurityError),
    (kafka.TopicAuthorizationFailedError(), ConfigError),
    (kafka.GroupAuthorizationFailedError(), ConfigError),
    (kafka.InvalidReplicationFactorError(), ConfigError),
    (kafka.MessageSizeTooLargeError(), RecordTooLargeError),
    (UnknownKafkaError("something new"), FatalError),
    (UnknownRetriableKafkaError("something new, but transient"), RetriableError),
    (NewerFencing(), OwnershipLostError),
    (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9092)"), RetriableError),
    (OSError(101, "Network is unreachable"), RetriableError),
    (TimeoutError(), RetriableError),
    (ValueError("not a client error"), FatalError),
]
IDS = [type(exc).__name__ for exc, _ in REPRESENTATIVE]


class TestTranslateKafkaError:
    @pytest.mark.parametrize(("exc", "expected"), REPRESENTATIVE, ids=IDS)
    def test_maps_each_client_error_to_our_class(
        self, exc: BaseException, expected: type[SensorstreamError]
    ) -> None:
        """Retriable, ownership lost, config, too large or fatal: exactly the class, no subclass."""
        assert expected is type(translate_kafka_error(exc, "producing 3 outputs"))

    @pytest.mark.parametrize(("exc", "expected"), REPRESENTATIVE, ids=IDS)
    def test_message_names_the_action_and_the_client_error(
        self, exc: BaseException, expected: type[SensorstreamError]
    ) -> None:
        """The message starts with '<action> failed:' and names the client's error class."""
        message = str(translate_kafka_error(exc, "producing 3 outputs"))

        assert (True, True) == (
            message.startswith("producing 3 outputs failed: "),
            type(exc).__name__ in message,
        )

    def test_keeps_the_client_errors_detail(self) -> None:
        """The client's own text (where it tried, what it got) is part of the message."""
        exc = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9092)")

        assert (
            "connecting to Kafka at 127.0.0.1:9092 failed: ConnectionRefusedError: "
            "[Errno 111] Connect call failed ('127.0.0.1', 9092)"
        ) == str(translate_kafka_error(exc, "connecting to Kafka at 127.0.0.1:9092"))

    def test_an_error_without_text_is_named_by_its_class(self) -> None:
        """A bare TimeoutError reads '<action> failed: TimeoutError', no dangling colon."""
        assert "committing offsets failed: TimeoutError" == str(
            translate_kafka_error(TimeoutError(), "committing offsets")
        )

    @pytest.mark.parametrize(
        "exc",
        [
            kafka.KafkaConnectionError("Connection at 127.0.0.1:9092 closed"),
            kafka.TopicAuthorizationFailedError("Not authorized to access topics"),
        ],
        ids=["client-error", "broker-error"],
    )
    def test_names_the_client_error_once(self, exc: kafka.KafkaError) -> None:
        """aiokafka's str() already starts with the class name: it is not repeated."""
        message = str(translate_kafka_error(exc, "producing 3 outputs"))

        assert 1 == message.count(type(exc).__name__), message


class TestKafkaErrors:
    @pytest.mark.parametrize(("exc", "expected"), REPRESENTATIVE[:-1], ids=IDS[:-1])
    def test_raises_ours_from_the_client_error(
        self, exc: BaseException, expected: type[SensorstreamError]
    ) -> None:
        """A client error leaves the block as our class, the client's error as its cause."""
        with pytest.raises(SensorstreamError) as raised, kafka_errors("committing offsets"):
            raise exc

        assert (expected, exc) == (type(raised.value), raised.value.__cause__)

    @pytest.mark.parametrize(
        "exc",
        [
            ValueError("a bug in our code"),
            KeyError("partition"),
            RetriableError("already ours"),
            FatalError("already ours"),
            kafka.ConsumerStoppedError(),  # not a KafkaError: the consumer was stopped on purpose
        ],
        ids=["ValueError", "KeyError", "RetriableError", "FatalError", "ConsumerStoppedError"],
    )
    def test_lets_everything_else_pass_untouched(self, exc: Exception) -> None:
        """Non-client exceptions (and ours) leave the block as the same object, no cause added."""
        with pytest.raises(type(exc)) as raised, kafka_errors("committing offsets"):
            raise exc

        assert (exc, None) == (raised.value, raised.value.__cause__)

    def test_a_quiet_block_returns_normally(self) -> None:
        """Without an exception the block runs to its end."""
        done = []

        with kafka_errors("committing offsets"):
            done.append(True)

        assert [True] == done


class TestKafkaErrorsTable:
    def test_maps_client_errors_to_our_tree(self) -> None:
        """Every key is an aiokafka error; every value is one our callers handle."""
        ours = {ConfigError, OwnershipLostError, RecordTooLargeError, RetriableError, SecurityError}
        assert (set(), ours) == (
            {cls for cls in KAFKA_ERRORS if not issubclass(cls, kafka.KafkaError)},
            set(KAFKA_ERRORS.values()),
        )

    def test_overrides_only_errors_the_client_calls_non_retriable(self) -> None:
        """Where aiokafka says 'retriable' the translation agrees: the table never overrides it."""
        retriable_client_errors = [
            cls
            for _, cls in inspect.getmembers(kafka, inspect.isclass)
            if issubclass(cls, kafka.KafkaError) and cls.retriable
        ]

        assert [] == [
            cls.__name__
            for cls in retriable_client_errors
            if not isinstance(translate_kafka_error(cls(), "x"), RetriableError)
        ]

    def test_no_client_error_is_left_to_a_generic_fatal_by_accident(self) -> None:
        """Ownership, authentication and size errors are all tabled, not plain FatalError."""
        must_be_tabled = [
            kafka.CommitFailedError,
            kafka.IllegalGenerationError,
            kafka.UnknownMemberIdError,
            kafka.ProducerFenced,
            kafka.InvalidProducerEpoch,
            kafka.SaslAuthenticationFailed,
            kafka.TopicAuthorizationFailedError,
            kafka.GroupAuthorizationFailedError,
            kafka.ClusterAuthorizationFailedError,
            kafka.TransactionalIdAuthorizationFailed,
            kafka.MessageSizeTooLargeError,
            kafka.RecordTooLargeError,
        ]

        assert [] == [cls.__name__ for cls in must_be_tabled if cls not in KAFKA_ERRORS]
