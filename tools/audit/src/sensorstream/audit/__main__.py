"""``sensorstream-audit``: check that a pipeline lost nothing and counted nothing twice.

Exit status: 0 when every reading is accounted for exactly once, 1 when some are
missing or counted twice, 2 for a bad setting (or a topic that does not exist), 3 when
the audit could not run (Kafka unreachable, or it refused the credentials); ``--follow``
exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence

import orjson
import structlog
from rich.console import Console

from sensorstream.runtime import (
    ConfigError,
    FatalError,
    ObservabilityServer,
    StopSignal,
    client_options,
    configure_logging,
    load_settings,
    retry,
    run_service,
    startup_policy,
)
from sensorstream.runtime.security import check_credentials

from ._audit import PipelineAudit
from ._metrics import AuditMetrics
from ._reading import AuditTopics
from ._render import render
from .settings import AuditSettings

EXIT_PROBLEMS = 1
EXIT_CANNOT_AUDIT = 3

log = structlog.get_logger("sensorstream.audit")


def _audit_for(settings: AuditSettings) -> PipelineAudit:
    topics = AuditTopics(
        input=settings.topic, aggregates=settings.aggregates_topic, dlq=settings.dlq_topic
    )
    return PipelineAudit(
        topics,
        client_options(settings),
        isolation_level=settings.isolation_level,
        since_ms=settings.since_ms,
        until_ms=settings.until_ms,
        window_memory=settings.window_memory,
        policy=startup_policy(settings),
    )


async def audit_once(settings: AuditSettings) -> int:
    """One pass from the start of the range to where the topics end now; print the report."""
    async with _audit_for(settings) as audit:
        await audit.run_pass()
        report = audit.report(limit=settings.limit)
    if settings.format == "json":
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        # Piped output keeps whole sensor ids on a line: rich's 80 columns would wrap them.
        console = Console(width=None if sys.stdout.isatty() else 160)
        render(report, console, title=f"Audit of {settings.topic}")
    return 0 if report.ok else EXIT_PROBLEMS


async def follow(settings: AuditSettings, stop: StopSignal) -> int:
    """Pass over the topics every ``interval`` s until stopped, exporting the figures."""
    metrics = AuditMetrics()
    passes = 0
    server = ObservabilityServer.from_settings(
        settings, readiness=lambda: (passes > 0, {"passes": passes})
    )
    await server.start()
    try:
        async with _audit_for(settings) as audit:
            metrics.up.set(1)
            settled_at = time.monotonic()
            while not stop.is_set():
                stats = await audit.run_pass()
                if time.monotonic() - settled_at >= settings.grace:
                    audit.ledger.settle()
                    settled_at = time.monotonic()
                report = audit.report(limit=settings.limit, in_flight=True)
                metrics.update(report, stats, now=time.time())
                passes += 1
                t = report.totals
                log.info(
                    "audit_passed",
                    records=stats.records,
                    seconds=round(stats.seconds, 3),
                    produced=t.produced,
                    missing=t.missing,
                    duplicated=t.duplicated,
                    partial_windows=t.partial_windows,
                    sensors_with_problems=report.sensors_with_problems,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.interval)
    finally:
        metrics.up.set(0)
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Parse settings (exit 2 on a bad one), audit, exit with the status above."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = ["--format=json" if a == "--json" else a for a in args]
    settings = load_settings(AuditSettings, args)
    configure_logging(
        service=settings.service_name,
        version="0",
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
        secrets=settings.secret_values(),
    )

    async def run(stop: StopSignal) -> int:
        try:
            # A refused password or certificate ends the audit at once, with one line.
            options = client_options(settings)
            await retry(
                "connect",
                lambda: check_credentials(settings, options),
                policy=startup_policy(settings),
            )
            if settings.follow:
                return await follow(settings, stop)
            return await audit_once(settings)
        except ConfigError:
            raise
        except FatalError as exc:
            print(f"{settings.service_name}: error: {exc}", file=sys.stderr)
            return EXIT_CANNOT_AUDIT

    sys.exit(run_service(run, prog=settings.service_name))


if __name__ == "__main__":
    main()
