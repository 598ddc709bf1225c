"""Plumbing both services share: settings, logging, the observability HTTP server,
Kafka connection helpers and the process lifecycle.

Nothing here knows about sensors or windows; that lives in ``sensorstream.schema``
(the event contract) and in each service.
"""

from sensorstream.schema import (
    ConfigError,
    FatalError,
    PoisonEventError,
    RetriableError,
    SensorstreamError,
)

from .http import ObservabilityServer, Readiness
from .kafka import KafkaUnavailableError, TopicLayout, client_options, connect_admin, ensure_topic
from .lifecycle import EXIT_FATAL, StopSignal, run_service
from .logging import configure_logging, redact_secrets
from .settings import (
    ENV_PREFIX,
    EXIT_BAD_SETTING,
    LogFormat,
    LogLevel,
    ServiceSettings,
    load_settings,
    parse_bootstrap_servers,
)

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
    "PoisonEventError",
    "Readiness",
    "RetriableError",
    "SensorstreamError",
    "ServiceSettings",
    "StopSignal",
    "TopicLayout",
    "client_options",
    "configure_logging",
    "connect_admin",
    "ensure_topic",
    "load_settings",
    "parse_bootstrap_servers",
    "redact_secrets",
    "run_service",
]
