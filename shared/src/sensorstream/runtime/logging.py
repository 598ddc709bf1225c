"""Structured logging for every service: structlog, JSON or console, secrets redacted.

Log events are short snake_case verbs in the past tense (``partitions_assigned``)
with context as key-value pairs. Each line carries the service name, version and
instance id. Nothing on a per-event hot path may log at INFO.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from pydantic import SecretStr

__all__ = ["configure_logging", "redact_secrets"]

_SECRET_KEYS = frozenset({"password", "sasl_password", "secret", "token", "api_key"})
_REDACTED = "**********"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values whose key names a secret, and any ``SecretStr``, wherever they are logged."""
    for key, value in event_dict.items():
        if isinstance(value, SecretStr) or (key in _SECRET_KEYS and value is not None):
            event_dict[key] = _REDACTED
        elif isinstance(value, dict):
            event_dict[key] = {
                k: (_REDACTED if k in _SECRET_KEYS and v is not None else v)
                for k, v in value.items()
            }
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(
    *, service: str, version: str, instance: str, fmt: str = "json", level: str = "info"
) -> None:
    """Set up structlog (and stdlib logging, so aiokafka's warnings come out the same way)."""
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info
            if fmt != "console"
            else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service, version=version, instance=instance)

    # Third-party libraries log through stdlib logging; render them with the same pipeline.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING) if level != "debug" else logging.DEBUG)
