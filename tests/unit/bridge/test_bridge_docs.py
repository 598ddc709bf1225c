"""docs/bridge.md stays true to the code: every setting and every metric has a row."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from sensorstream.bridge import METRIC_NAMES, BridgeSettings, DevicesSettings
from sensorstream.bridge._metrics import BridgeMetrics
from sensorstream.runtime import ServiceSettings

PAGE = Path(__file__).resolve().parents[3] / "docs" / "bridge.md"


class TestBridgePage:
    def test_every_metric_is_documented_and_listed(self) -> None:
        """Each exported family is in METRIC_NAMES and has a row in docs/bridge.md."""
        registry = CollectorRegistry()
        BridgeMetrics(registry)
        exported = {
            family.name + ("_total" if family.type == "counter" else "")
            for family in registry.collect()
        }
        text = PAGE.read_text()
        assert sorted(exported) == sorted(METRIC_NAMES)
        assert [] == [name for name in METRIC_NAMES if f"`{name}" not in text]

    def test_every_own_setting_is_documented(self) -> None:
        """Each flag the bridge and the simulator add to the common ones is in the page."""
        common = set(ServiceSettings.model_fields)
        own = (set(BridgeSettings.model_fields) | set(DevicesSettings.model_fields)) - common
        text = PAGE.read_text()
        assert [] == sorted(n for n in own if f"--{n.replace('_', '-')}" not in text)
