"""One audit of one pipeline: three readers and a ledger, passed over together."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from sensorstream.runtime import RetryPolicy

from ._ledger import DEFAULT_WINDOW_MEMORY, AuditReport, Ledger
from ._reading import AuditTopics, IsolationLevel, PassStats, TopicReader, audit_pass

__all__ = ["PipelineAudit", "audit_pipeline"]


class PipelineAudit:
    """An async context manager: connect the readers, then :meth:`run_pass` as often as
    wanted; each pass reads what arrived since the previous one.

    The input is read read_committed, as the processor reads it; ``isolation_level``
    applies to the processor's outputs (aggregates and DLQ).
    """

    def __init__(
        self,
        topics: AuditTopics,
        options: Mapping[str, Any],
        *,
        isolation_level: IsolationLevel = "read_committed",
        since_ms: int | None = None,
        until_ms: int | None = None,
        window_memory: int = DEFAULT_WINDOW_MEMORY,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.topics = topics
        self.ledger = Ledger(input_topic=topics.input, window_memory=window_memory)
        # Outputs are read from the same time on, but to their end: a reading of the
        # range may be aggregated or dead-lettered after the range closes.
        self._input = TopicReader(
            topics.input,
            options,
            isolation_level="read_committed",
            since_ms=since_ms,
            until_ms=until_ms,
            policy=policy,
        )
        self._dead_letters = TopicReader(
            topics.dlq, options, isolation_level=isolation_level, since_ms=since_ms, policy=policy
        )
        self._aggregates = TopicReader(
            topics.aggregates,
            options,
            isolation_level=isolation_level,
            since_ms=since_ms,
            policy=policy,
        )
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> PipelineAudit:
        async with contextlib.AsyncExitStack() as stack:
            for reader in (self._input, self._dead_letters, self._aggregates):
                stack.push_async_callback(reader.stop)
                await reader.start()
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run_pass(self) -> PassStats:
        return await audit_pass(self.ledger, self._input, self._dead_letters, self._aggregates)

    def report(self, *, limit: int = 100, in_flight: bool = False) -> AuditReport:
        return self.ledger.report(limit=limit, in_flight=in_flight)


async def audit_pipeline(
    bootstrap: str,
    topics: AuditTopics,
    *,
    isolation_level: IsolationLevel = "read_committed",
    since_ms: int | None = None,
    until_ms: int | None = None,
    window_memory: int = DEFAULT_WINDOW_MEMORY,
    limit: int = 100,
    options: Mapping[str, Any] | None = None,
) -> AuditReport:
    """Audit ``topics`` once, from the beginning (or ``since_ms``) to where they end now.

    ``options`` are extra aiokafka client keyword arguments (security, client id).
    """
    client = {"bootstrap_servers": bootstrap, **(options or {})}
    async with PipelineAudit(
        topics,
        client,
        isolation_level=isolation_level,
        since_ms=since_ms,
        until_ms=until_ms,
        window_memory=window_memory,
    ) as audit:
        await audit.run_pass()
        return audit.report(limit=limit)
