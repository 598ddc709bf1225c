"""The producer's metric families carry the names the dashboards use."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sensorstream.producer import METRIC_NAMES
from sensorstream.producer._metrics import ProducerMetrics


class TestProducerMetrics:
    def test_every_documented_name_is_exported(self) -> None:
        """Each name in METRIC_NAMES appears in the exposition."""
        registry = CollectorRegistry()
        metrics = ProducerMetrics(registry, version="1.2.3")
        metrics.send_errors("KafkaTimeoutError").inc(0)
        text = generate_latest(registry).decode()
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        missing = [n for n in METRIC_NAMES if not any(s.startswith(n) for s in samples)]
        assert [] == missing

    def test_build_info(self) -> None:
        """build_info{version} is 1."""
        registry = CollectorRegistry()
        ProducerMetrics(registry, version="1.2.3")
        value = registry.get_sample_value("sensorstream_producer_build_info", {"version": "1.2.3"})
        assert 1.0 == value

    def test_error_children_are_bound_once(self) -> None:
        """The same kind returns the same child, so hot paths never look labels up twice."""
        metrics = ProducerMetrics(CollectorRegistry())
        assert metrics.send_errors("x") is metrics.send_errors("x")
