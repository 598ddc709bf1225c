"""The exception tree of Sensorstream, shared by both services.

The tree says what the caller must do next::

    SensorstreamError
    ├── PoisonEventError      this event can never succeed: send it to the dead-letter
    │                         topic and move on (carries the decoder's Rejection)
    ├── RetriableError        a broker or network hiccup (unreachable, leader moving,
    │                         timed out): back off and retry within a time budget
    ├── OwnershipLostError    this instance no longer owns the partition (the group
    │                         rebalanced, or a newer owner fenced its producer): stop
    │                         working on it and commit nothing; the new owner resumes
    │                         from the last commit. Never retried, never fatal
    └── FatalError            the process cannot do useful work: exit with one line
        ├── ConfigError       a setting is missing or wrong (a bad value, no such file)
        ├── SecurityError     the broker refused who we are: authentication failed, or a
        │                     certificate is not trusted, expired or for another host
        ├── RecordTooLargeError  a record is larger than the broker or topic accepts
        └── RetriesExhaustedError  a RetriableError outlasted its time budget

Client-library exceptions (aiokafka) are translated into this tree in one place,
``sensorstream.runtime.errors``, with ``raise ... from exc``, so processing code and
retry policies never match on a client's internals. ``sensorstream.runtime``
re-exports these classes.
"""

from __future__ import annotations

from ._rejection import Rejection, RejectReason


class SensorstreamError(Exception):
    """Root of every exception Sensorstream raises on purpose."""


class PoisonEventError(SensorstreamError):
    """This event can never be processed, however often it is retried: dead-letter it."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason}: {rejection.message}")
        self.rejection = rejection

    @property
    def reason(self) -> RejectReason:
        """The bounded reason code, ready for a metric label or the DLQ header."""
        return self.rejection.reason


class RetriableError(SensorstreamError):
    """A transient failure (broker unavailable, timeout): back off and try again."""


class OwnershipLostError(SensorstreamError):
    """Another member or producer owns this partition now: stop working on it, quietly."""


class FatalError(SensorstreamError):
    """Retrying cannot help (bad config, authentication failure): exit with this message."""


class ConfigError(FatalError):
    """A setting is missing or invalid; the message names the variable and a valid value."""


class SecurityError(FatalError):
    """The broker and we do not trust each other: failed authentication, or a TLS
    certificate that is untrusted, expired or names another host. Retrying cannot help;
    the message says which and which setting to check."""


class RecordTooLargeError(FatalError):
    """A record exceeds what the broker or its topic accepts (``max.message.bytes``)."""


class RetriesExhaustedError(FatalError):
    """A retriable failure kept happening for longer than its time budget."""
