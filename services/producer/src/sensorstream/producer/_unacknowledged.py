"""What the producer generated and Kafka never acknowledged, as the final log line says it.

A sensor's readings share one partition and are handed over in ``seq`` order, and a
queued batch is never dropped, so what a sensor has left unacknowledged at shutdown is
a suffix of what it generated: one range of seqs, up to its last. (After a fatal
delivery failure a sensor may have more than one range; the report is exact either
way.) The report gives the total, the number of sensors affected, and each affected
sensor's seqs as ranges for the first :data:`LISTED_SENSORS` of them by id, so a
fleet of 100,000 sensors still fits one log line.

Built once, at shutdown, from the sender's unacknowledged records; never per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._simulation import seq_of

__all__ = ["LISTED_SENSORS", "UnacknowledgedReadings", "seq_ranges"]

LISTED_SENSORS = 20
"""Sensors whose unacknowledged seqs the final log line lists (the rest are counted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnacknowledgedReadings:
    """The readings never acknowledged, summarized per sensor."""

    count: int = 0
    """Readings never acknowledged."""
    sensors: int = 0
    """Sensors with at least one of them."""
    seqs: dict[str, str] = field(default_factory=dict)
    """Sensor id -> its unacknowledged seqs as ranges (``"120-388"``), first sensors by id."""

    @classmethod
    def of(
        cls, records: Iterable[tuple[bytes, bytes]], *, listed: int = LISTED_SENSORS
    ) -> UnacknowledgedReadings:
        """Summarize encoded (key, value) readings; ``listed`` caps the sensors spelled out."""
        by_sensor: dict[bytes, list[int]] = {}
        count = 0
        for key, value in records:
            count += 1
            by_sensor.setdefault(key, []).append(seq_of(value))
        shown = sorted(by_sensor)[:listed]
        return cls(
            count=count,
            sensors=len(by_sensor),
            seqs={key.decode(): seq_ranges(by_sensor[key]) for key in shown},
        )

    def log_fields(self) -> dict[str, Any]:
        """``unacknowledged_sensors`` and ``unacknowledged_seqs`` for the final log line."""
        return {"unacknowledged_sensors": self.sensors, "unacknowledged_seqs": self.seqs}

    def describe(self) -> str:
        """A clause for the final message, e.g. ``from 20 sensors (seqs in ...)``."""
        if not self.count:
            return "from no sensor"
        listed = "" if len(self.seqs) == self.sensors else f", the first {len(self.seqs)} listed"
        return f"from {self.sensors} sensors (their seqs in unacknowledged_seqs{listed})"


def seq_ranges(seqs: Sequence[int]) -> str:
    """``seqs`` as sorted, comma-separated inclusive ranges: ``"3-7,12"``."""
    spans: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in spans)
