"""Specification of the processor metrics: names the dashboards rely on, bound children."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sensorstream.processor._metrics import ProcessorMetrics

NAMES = [
    "events_consumed_total", "events_total", "dead_letters_total", "processing_latency_seconds",
    "handler_duration_seconds", "consumer_lag_events", "consumer_lag_seconds",
    "assigned_partitions", "rebalances_total", "rebalance_duration_seconds", "commits_total",
    "commit_latency_seconds", "open_windows", "aggregates_emitted_total", "alerts_emitted_total",
    "buffer_depth_events", "paused_partitions", "up", "build_info",
    "dead_letters_truncated_total", "retries_total",
]  # fmt: skip


class TestProcessorMetrics:
    def test_every_contract_name_is_exported(self) -> None:
        """All metric names of the brief exist with the sensorstream_processor_ prefix."""
        registry = CollectorRegistry()
        metrics = ProcessorMetrics(registry, version="1.2.3")
        metrics.bind_partition(0)
        exported = {m.name.removeprefix("sensorstream_processor_") for m in registry.collect()}
        # prometheus_client strips _total from counter family names
        assert set() == {n.removesuffix("_total") for n in NAMES} - exported

    def test_unbind_removes_partition_gauges(self) -> None:
        """A revoked partition's lag and buffer gauges disappear from /metrics."""
        registry = CollectorRegistry()
        metrics = ProcessorMetrics(registry)
        metrics.bind_partition(3).lag_events.set(7)
        metrics.unbind_partition(3)
        text = generate_latest(registry).decode()
        assert 'consumer_lag_events{partition="3"}' not in text

    def test_outcome_children_are_prebound(self) -> None:
        """Outcome counters are pre-bound children of events_total{outcome}."""
        registry = CollectorRegistry()
        metrics = ProcessorMetrics(registry)
        metrics.ok.inc(2)
        value = registry.get_sample_value("sensorstream_processor_events_total", {"outcome": "ok"})
        assert 2.0 == value

    def test_outcome_totals_read_the_counters(self) -> None:
        """The summary line's totals are the counters' values, by outcome."""
        metrics = ProcessorMetrics(CollectorRegistry())
        metrics.ok.inc(3)
        metrics.retried.inc(2)

        assert {
            "ok": 3,
            "invalid": 0,
            "late": 0,
            "dropped": 0,
            "replayed": 0,
            "dead_lettered": 0,
            "retried": 2,
        } == metrics.outcome_totals()
