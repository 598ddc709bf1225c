"""``sensorstream audit``: ``sensorstream-audit`` under the operator's command.

Every option is the audit's own (``sensorstream audit --help`` lists them: ``--since``,
``--until``, ``--json``, ``--follow`` ...), and so are its exit statuses: 0 clean, 1
readings missing or counted twice, 2 a bad setting, 3 Kafka unreachable or refusing us.
"""

from __future__ import annotations

import typer

from sensorstream.audit.__main__ import main as audit_main

__all__ = ["audit"]


def audit(ctx: typer.Context) -> None:
    """Check that every reading is in exactly one aggregate or the DLQ (sensorstream-audit)."""
    bootstrap = ctx.find_root().meta.get("sensorstream.bootstrap")
    args = list(ctx.args)
    if bootstrap and not any(a.startswith("--bootstrap-servers") for a in args):
        args = ["--bootstrap-servers", bootstrap, *args]
    audit_main(args)
