"""The one translation of Kafka client errors into the project's exception tree.

aiokafka raises its own classes (and plain ``OSError`` for a refused connection); every
call into it that can fail runs inside :func:`kafka_errors`, which re-raises them as
:class:`~sensorstream.schema.RetriableError`, :class:`~sensorstream.schema.OwnershipLostError`
or a :class:`~sensorstream.schema.FatalError` subclass (``raise ... from exc``, so the
client's exception stays visible as the cause). Retry policies are written against
our classes only (``sensorstream.runtime.retry``).

The table follows the Kafka protocol's own classification (each aiokafka error's
``retriable`` flag) and overrides it where the client is coarser than the situation:
a timed-out local queue is retriable, an authentication failure is a security error,
an authorization failure a configuration problem, and a lost group generation or a
fenced producer means someone else owns the partition now.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from aiokafka import errors as kafka

from sensorstream.schema import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    RecordTooLargeError,
    RetriableError,
    SecurityError,
    SensorstreamError,
)

__all__ = ["KAFKA_ERRORS", "kafka_errors", "translate_kafka_error"]

KAFKA_ERRORS: Final[dict[type[BaseException], type[SensorstreamError]]] = {
    # Someone else owns the partition now: the group moved on, or a newer producer
    # took the transactional id.
    kafka.CommitFailedError: OwnershipLostError,
    kafka.IllegalGenerationError: OwnershipLostError,
    kafka.UnknownMemberIdError: OwnershipLostError,
    kafka.RebalanceInProgressError: OwnershipLostError,
    kafka.ProducerFenced: OwnershipLostError,
    kafka.InvalidProducerEpoch: OwnershipLostError,
    # The broker refused who we are: no retry fixes a credential.
    kafka.AuthenticationFailedError: SecurityError,
    kafka.AuthenticationMethodNotSupported: SecurityError,
    kafka.SaslAuthenticationFailed: SecurityError,
    kafka.UnsupportedSaslMechanismError: SecurityError,
    kafka.IllegalSaslStateError: SecurityError,
    # What we may do is wrong: a setting (or the broker's ACLs) must change.
    kafka.TopicAuthorizationFailedError: ConfigError,
    kafka.GroupAuthorizationFailedError: ConfigError,
    kafka.ClusterAuthorizationFailedError: ConfigError,
    kafka.TransactionalIdAuthorizationFailed: ConfigError,
    kafka.KafkaConfigurationError: ConfigError,
    kafka.InvalidConfigurationError: ConfigError,
    kafka.InvalidReplicationFactorError: ConfigError,
    kafka.InvalidPartitionsError: ConfigError,
    kafka.InvalidTopicError: ConfigError,
    kafka.PolicyViolationError: ConfigError,
    # The record itself is the problem.
    kafka.MessageSizeTooLargeError: RecordTooLargeError,
    kafka.RecordTooLargeError: RecordTooLargeError,
    kafka.RecordListTooLargeError: RecordTooLargeError,
    # Transient although the client does not flag them so: a local queue that stayed
    # full for request_timeout_ms (broker away), a broker that is restarting.
    kafka.KafkaTimeoutError: RetriableError,
    kafka.BrokerNotAvailableError: RetriableError,
    kafka.KafkaUnavailableError: RetriableError,
}


def translate_kafka_error(exc: BaseException, action: str) -> SensorstreamError:
    """Our exception for ``exc``, raised while ``action`` (e.g. "producing 12 outputs").

    The most specific entry of :data:`KAFKA_ERRORS` wins; otherwise a Kafka error's own
    ``retriable`` flag decides, and ``OSError`` (a refused connection; ``TimeoutError``
    included) is retriable. Anything else is fatal.
    """
    name, text = type(exc).__name__, str(exc)
    # aiokafka's messages often start with the class name already ("[Error 6] NotLeader...").
    detail = f"{action} failed: " + (text if name in text else f"{name}: {text}" if text else name)
    for cls in type(exc).__mro__:
        ours = KAFKA_ERRORS.get(cls)
        if ours is not None:
            return ours(detail)
    if isinstance(exc, kafka.KafkaError):
        return (RetriableError if exc.retriable else FatalError)(detail)
    if isinstance(exc, OSError):  # includes TimeoutError
        return RetriableError(detail)
    return FatalError(detail)


@contextmanager
def kafka_errors(action: str) -> Iterator[None]:
    """Run a block of Kafka client calls; re-raise client errors as ours (see module doc)."""
    try:
        yield
    except (kafka.KafkaError, OSError) as exc:
        raise translate_kafka_error(exc, action) from exc
