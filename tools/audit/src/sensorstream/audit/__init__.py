"""``sensorstream-audit``: per-sensor ``seq`` accounting of a running pipeline.

Every reading carries its sensor's ``seq`` and every aggregate its ``first_seq`` ..
``last_seq``, so the audit can say for each reading of the input topic whether it
reached exactly one aggregate, the dead-letter topic, or neither (lost), and whether
any was counted twice. Use it from the command line (``sensorstream-audit --help``) or
from Python::

    report = await audit_pipeline("127.0.0.1:9092", AuditTopics(input=..., aggregates=...,
                                  dlq=...))
    assert report.ok, report.totals
"""

from ._audit import PipelineAudit, audit_pipeline
from ._intervals import SeqRanges
from ._ledger import DEFAULT_WINDOW_MEMORY, AuditReport, AuditTotals, Ledger, SensorReport
from ._reading import AuditTopics, PassStats

__all__ = [
    "DEFAULT_WINDOW_MEMORY",
    "AuditReport",
    "AuditTopics",
    "AuditTotals",
    "Ledger",
    "PassStats",
    "PipelineAudit",
    "SensorReport",
    "SeqRanges",
    "audit_pipeline",
]
