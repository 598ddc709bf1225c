"""Plumbing both services share: settings, logging, the observability HTTP server,
Kafka connection helpers and the process lifecycle.

Nothing here knows about sensors or windows; that lives in ``sensorstream.schema``
(the event contract) and in each service.
"""

from sensorstream.schema import (
    ConfigError,
    FatalError,
    OwnershipLostError,
    PoisonEventError,
    RecordTooLargeError,
    RetriableError,
    RetriesExhaustedError,
    SensorstreamError,
)

from .errors import kafka_errors, translate_kafka_error
from .http import ObservabilityServer, Readiness
from .kafka import KafkaUnavailableError, client_options, connect_admin, startup_policy
from .lifecycle import EXIT_FATAL, StopSignal, run_service, until_stopped
from .logging import configure_logging, redact_secrets
from .retry import RetryPolicy, instrument_retries, retry
from .settings import (
    ENV_PREFIX,
    EXIT_BAD_SETTING,
    LogFormat,
    LogLevel,
    ServiceSettings,
    load_settings,
    parse_bootstrap_servers,
)
from .topics import TopicState, ensure_topics, named_topology

__all__ = [
    "ENV_PREFIX",
    "EXIT_BAD_SETTING",
    "EXIT_FATAL",
    "ConfigError",
    "FatalError",
    "KafkaUnavailableError",
    "LogFormat",
    "LogLevel",
    "ObservabilityServer",
    "OwnershipLostError",
    "PoisonEventError",
    "Readiness",
    "RecordTooLargeError",
    "RetriableError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SensorstreamError",
    "ServiceSettings",
    "StopSignal",
    "TopicState",
    "client_options",
    "configure_logging",
    "connect_admin",
    "ensure_topics",
    "instrument_retries",
    "kafka_errors",
    "load_settings",
    "named_topology",
    "parse_bootstrap_servers",
    "redact_secrets",
    "retry",
    "run_service",
    "startup_policy",
    "translate_kafka_error",
    "until_stopped",
]
