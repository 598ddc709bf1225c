"""The exception tree of Sensorstream, shared by both services.

The tree separates what the caller must do next::

    SensorstreamError
    ├── PoisonEventError      this event can never succeed: send it to the dead-letter
    │                         topic and move on (carries the decoder's Rejection)
    ├── RetriableError        a broker or network hiccup: back off and retry
    └── FatalError            the process cannot do useful work: exit with a clear message
        └── ConfigError       a setting is missing or wrong (bad value, failed auth)

Client-library exceptions (aiokafka, orjson) are translated into this tree at the
boundary with ``raise ... from exc``, so processing code never matches on a client's
internals. ``sensorstream.runtime`` re-exports these classes.
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


class FatalError(SensorstreamError):
    """Retrying cannot help (bad config, authentication failure): exit with this message."""


class ConfigError(FatalError):
    """A setting is missing or invalid; the message names the variable and a valid value."""
