"""How every subcommand reaches Kafka: the services' settings, from the environment.

A subcommand builds its clients from :func:`client_options` of the :class:`CliSettings`
that :func:`connection` returns, so TLS, SASL and secrets files work as they do for the
services (``docs/security.md``), with the same one-line refusals.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, ClassVar, NoReturn, TypeVar

import typer

from sensorstream.runtime import (
    ConfigError,
    FatalError,
    ServiceSettings,
    client_options,
    configure_logging,
    load_settings,
    retry,
    startup_policy,
)
from sensorstream.runtime.security import check_credentials

__all__ = [
    "EXIT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "CliSettings",
    "connection",
    "connection_options",
    "fail",
    "run",
]

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_BAD_USAGE = 2
EXIT_UNREACHABLE = 3

T = TypeVar("T")


class CliSettings(ServiceSettings):
    """The connection part of the services' settings; nothing of its own."""

    service_name: ClassVar[str] = "sensorstream"

    startup_timeout: float = 15.0


def connection(ctx: typer.Context) -> CliSettings:
    """The settings of this invocation: ``SENSORSTREAM_*`` variables, and the root
    command's ``--bootstrap-servers`` if given. A bad one exits 2 with one line. Logging
    goes to stderr, errors only unless ``SENSORSTREAM_LOG_LEVEL`` asks for more."""
    settings: CliSettings | None = ctx.find_root().meta.get("sensorstream.settings")
    if settings is None:
        bootstrap = ctx.find_root().meta.get("sensorstream.bootstrap")
        argv = ["--bootstrap-servers", bootstrap] if bootstrap else []
        settings = load_settings(CliSettings, argv, prog="sensorstream")
        _quiet_logging(settings)
        ctx.find_root().meta["sensorstream.settings"] = settings
    return settings


def _quiet_logging(settings: CliSettings) -> None:
    """Logs to stderr, errors only unless ``SENSORSTREAM_LOG_LEVEL`` asks for more: the
    report on stdout is the command's answer (and ``--json`` must stay parseable)."""
    level = settings.log_level if "log_level" in settings.model_fields_set else "error"
    configure_logging(
        service=settings.service_name,
        version="0",
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=level,
        secrets=settings.secret_values(),
    )


async def connection_options(settings: CliSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for ``settings``, after checking the broker accepts
    them (a refusal raises ``SecurityError``; an absent broker is retried for
    ``--startup-timeout``, then ``RetriesExhaustedError``)."""
    options = client_options(settings)
    await retry(
        "connect", lambda: check_credentials(settings, options), policy=startup_policy(settings)
    )
    return options


def fail(message: str, status: int = EXIT_BAD_USAGE) -> NoReturn:
    """One line on stderr, then exit ``status``."""
    print(f"sensorstream: error: {message}", file=sys.stderr)
    raise typer.Exit(status)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a subcommand's coroutine; our errors become one line and an exit status
    (2 for a bad setting, 3 for Kafka unreachable or refusing us)."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_USAGE)
    except FatalError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
