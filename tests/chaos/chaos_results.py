"""One row per chaos scenario: recorded before its assertions, so a failure has a row too.

Rows are appended to ``.cache/chaos/results.jsonl`` (the history of every session) and
this session's rows are rendered to ``.cache/chaos/results.md``; ``conftest.py`` prints
the same table at the end of the session. ``SENSORSTREAM_CHAOS_RESULTS`` moves both
files to another directory.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

__all__ = ["SESSION_ROWS", "ScenarioRow", "record", "render_table", "results_dir"]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "SENSORSTREAM_CHAOS_RESULTS"
SESSION_STARTED = time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True, kw_only=True)
class ScenarioRow:
    """What one scenario did and what the audit found."""

    scenario: str
    guarantee: str
    produced: int
    """Events the producer handed to its Kafka client (its events_sent_total)."""
    acknowledged: int
    """Events the broker acknowledged (the producer's events_acked_total)."""
    processed: int
    """Readings the audit found aggregated or dead-lettered."""
    lost: int
    """Acknowledged readings missing from the topic, or in no aggregate and not dead-lettered."""
    duplicated: int
    """Readings counted twice (two different aggregates) or stored twice in the input."""
    reemitted: int
    """Identical re-emitted windows (allowed at least once, never exactly once)."""
    reordered: int
    partial_windows: int
    dead_lettered: int
    recover_s: float | None
    """Seconds from healing the fault until the group had caught up with live traffic."""
    wall_s: float
    verdict: str
    """``ok``, or ``FAIL`` and what was wrong."""


COLUMNS = (
    ("scenario", "scenario"),
    ("guarantee", "guarantee"),
    ("produced", "produced"),
    ("acknowledged", "acknowledged"),
    ("processed", "processed"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("reemitted", "re-emitted windows"),
    ("reordered", "reordered"),
    ("partial_windows", "partial windows"),
    ("dead_lettered", "dead-lettered"),
    ("recover_s", "time to recover (s)"),
    ("wall_s", "wall (s)"),
    ("verdict", "verdict"),
)

SESSION_ROWS: list[ScenarioRow] = []


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO_ROOT / ".cache" / "chaos")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "/")


def render_table(rows: list[ScenarioRow]) -> str:
    """The rows as a Markdown table, in scenario order (a, b, ...)."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [header, rule]
    for row in sorted(rows, key=lambda r: r.scenario):
        values = asdict(row)
        lines.append("| " + " | ".join(_cell(values[name]) for name, _ in COLUMNS) + " |")
    return "\n".join(lines)


def render_row(row: ScenarioRow) -> str:
    """One line for the scenario's own output."""
    values = asdict(row)
    return "chaos row: " + ", ".join(f"{title}={_cell(values[name])}" for name, title in COLUMNS)


def record(row: ScenarioRow) -> None:
    """Print the row, append it to results.jsonl and re-render results.md."""
    SESSION_ROWS.append(row)
    print(render_row(row), flush=True)
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    entry = {"session": SESSION_STARTED, "recorded": time.strftime("%H:%M:%S"), **asdict(row)}
    with open(directory / "results.jsonl", "ab") as history:
        history.write(orjson.dumps(entry) + b"\n")
    (directory / "results.md").write_text(
        f"# Chaos suite, session {SESSION_STARTED}\n\n{render_table(SESSION_ROWS)}\n"
    )
