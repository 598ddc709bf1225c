"""Specification of the sink's metrics: names, bounded labels, documented."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from sensorstream.sink._metrics import SinkMetrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "sink.md"


def _families() -> dict[str, str]:
    registry = CollectorRegistry()
    SinkMetrics(registry)
    return {family.name: family.type for family in registry.collect()}


class TestSinkMetrics:
    def test_names_follow_the_convention(self) -> None:
        """Every metric is sensorstream_sink_*; histograms of time end in _seconds."""
        families = _families()
        wrong = [name for name in families if not name.startswith("sensorstream_sink_")]
        timed = [n for n, kind in families.items() if kind == "histogram" and "duration" in n]
        assert ([], True) == (wrong, all(n.endswith("_seconds") for n in timed))

    def test_labels_are_bounded(self) -> None:
        """Label children are bound up front for every fixed label value: none is data."""
        metrics = SinkMetrics(CollectorRegistry())
        assert {("aggregates", "identical"), ("aggregates", "changed"), ("alerts", "identical"),
                ("alerts", "changed")} == set(metrics.conflicts)  # fmt: skip
        assert {"connection", "timeout", "conflict", "other"} == set(metrics.database_errors)

    def test_every_metric_is_documented(self) -> None:
        """docs/sink.md has a row for each metric the sink exports."""
        text = DOC.read_text()
        exported = [
            name + ("_total" if kind == "counter" else "") for name, kind in _families().items()
        ]
        assert [] == sorted(name for name in exported if f"`{name}" not in text)
