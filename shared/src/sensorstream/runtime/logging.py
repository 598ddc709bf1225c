"""Structured logging for every service: structlog, JSON or console, secrets redacted.

Log events are short snake_case verbs in the past tense (``partitions_assigned``)
with context as key-value pairs. Each line carries the service name, version and
instance id. Nothing on a per-event hot path may log at INFO.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import orjson
import structlog
from pydantic import SecretStr

__all__ = ["SecretRedactor", "configure_logging", "redact_secrets"]

_REDACTED = "**********"
# Key names whose values are masked whatever they hold (lower-cased; a ``*_file`` key
# names where a secret is, not the secret).
_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "authorization")


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    return not lowered.endswith("_file") and any(word in lowered for word in _SECRET_WORDS)


class SecretRedactor:
    """A structlog processor that masks secrets wherever they are in a log line.

    By key: a value under a key that names a secret (``password``, ``sasl_password``,
    ``token`` ...), at any depth. By type: any ``SecretStr``. By value: each of
    ``secrets`` (the configured passwords themselves) wherever it occurs inside a string,
    at any depth, the rendered exception and third-party libraries' messages included.
    It runs last before the renderer, so nothing added after it escapes.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self._clean(key, value)
        return event_dict

    def _clean(self, key: object, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, SecretStr) or _is_secret_key(key):
            return _REDACTED
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, int | float | bool):
            return value
        if isinstance(value, Mapping):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(None, v) for v in value]
        if self._secrets:  # anything else is rendered with str(): look at that
            text = str(value)
            cleaned = self._scrub(text)
            if cleaned != text:
                return cleaned
        return value

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text


redact_secrets = SecretRedactor()
"""Masks by key and type only; :func:`configure_logging` adds the configured secrets."""


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(
    *,
    service: str,
    version: str,
    instance: str,
    fmt: str = "json",
    level: str = "info",
    secrets: Iterable[str] = (),
) -> None:
    """Set up structlog (and stdlib logging, so aiokafka's warnings come out the same way).

    ``secrets`` are masked by value in every line (``ServiceSettings.secret_values()``).
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    redact = SecretRedactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    # Exceptions are rendered to text before the redaction, so it sees them too.
    finish = [structlog.processors.format_exc_info, redact, renderer]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *finish],
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
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING) if level != "debug" else logging.DEBUG)
