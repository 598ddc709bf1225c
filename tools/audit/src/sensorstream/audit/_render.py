"""The report for people: a few rich tables on stdout."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ._ledger import AuditReport

__all__ = ["render"]


def _ranges(pairs: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in pairs)


def render(report: AuditReport, console: Console, *, title: str) -> None:
    t = report.totals
    verdict = "[green]OK[/]" if report.ok else "[red]PROBLEMS FOUND[/]"
    console.print(f"{title}: {verdict}", soft_wrap=True)
    summary = Table(show_header=False)
    summary.add_column("figure")
    summary.add_column("readings", justify="right")
    rows = [
        ("sensors", t.sensors),
        ("produced (in the input)", t.produced),
        ("covered by aggregates", t.aggregated),
        ("in the DLQ", t.dead_lettered),
        ("missing (neither)", t.missing),
        ("counted twice", t.duplicated),
        ("partial windows", t.partial_windows),
        ("overcounted windows", t.overcounted_windows),
        ("windows re-emitted identically", t.reemitted_windows),
        ("windows re-emitted differently", t.conflicting_windows),
        ("dead-lettered twice", t.dead_lettered_twice),
        ("input: seq gaps", t.input_gaps),
        ("input: reordered", t.input_reordered),
        ("input: repeated seqs", t.input_duplicates),
        ("input: undecodable (poison)", t.undecodable),
        ("input: without seq (not audited)", t.unsequenced),
        ("aggregates without seq range", t.unreadable_aggregates),
    ]
    bad = {"missing (neither)", "counted twice", "windows re-emitted differently"}
    for name, value in rows:
        style = "red" if name in bad and value else None
        summary.add_row(name, f"{value:,}", style=style)
    console.print(summary)
    if t.dead_letters_by_reason:
        reasons = Table(title="DLQ by reason", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("readings", justify="right")
        for reason, count in t.dead_letters_by_reason.items():
            reasons.add_row(reason, f"{count:,}")
        console.print(reasons)
    if report.sensors:
        shown = len(report.sensors)
        sensors = Table(
            title=f"Sensors with problems ({shown:,} of {report.sensors_with_problems:,})",
            title_justify="left",
        )
        for column in ("sensor", "produced", "missing", "twice", "partial", "gaps", "reord."):
            sensors.add_column(
                column, justify="left" if column == "sensor" else "right", no_wrap=True
            )
        sensors.add_column("missing seqs")
        for s in report.sensors:
            sensors.add_row(
                s.sensor_id,
                f"{s.produced:,}",
                f"{s.missing:,}",
                f"{s.duplicated:,}",
                f"{s.partial_windows:,}",
                f"{s.input_gaps:,}",
                f"{s.input_reordered:,}",
                _ranges(s.missing_seqs) or _ranges(s.gap_seqs),
            )
        console.print(sensors)
    if report.undecodable_missing:
        where = ", ".join(f"{p}@{o}" for p, o in report.undecodable_missing)
        console.print(
            f"[red]Undecodable input records not in the DLQ[/] (partition@offset): {where}"
        )
