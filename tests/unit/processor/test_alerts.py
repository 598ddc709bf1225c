"""Threshold alerts with hysteresis: one alert per excursion, never a flood."""

from __future__ import annotations

import pytest

from sensorstream.processor._alerts import AlertRules, AlertThresholds
from sensorstream.schema import Alert, SensorReading

EVENT_ID = "00000000-0000-4000-8000-000000000000"


def reading(
    temperature: float = 20.0,
    humidity: float = 50.0,
    *,
    sensor_id: str = "sensor-0001",
    event_time: int = 1_700_000_000_000,
) -> SensorReading:
    return SensorReading(
        schema_version=1,
        event_id=EVENT_ID,
        sensor_id=sensor_id,
        seq=0,
        event_time=event_time,
        temperature=temperature,
        humidity=humidity,
    )


def kinds(rules: AlertRules, *readings: SensorReading) -> list[str]:
    """The kinds of alert raised, in order, feeding ``readings`` one by one."""
    raised: list[str] = []
    for r in readings:
        raised.extend(alert.kind for alert in rules.evaluate(r) or ())
    return raised


@pytest.fixture
def rules() -> AlertRules:
    return AlertRules(AlertThresholds())


class TestRaise:
    def test_in_range_raises_nothing(self, rules: AlertRules) -> None:
        """A normal reading returns None (the cheap path)."""
        assert rules.evaluate(reading()) is None

    def test_crossing_above_high_raises_one_alert(self, rules: AlertRules) -> None:
        """Above temperature_high: an Alert naming value, threshold, event time and id."""
        alerts = rules.evaluate(reading(temperature=45.5, event_time=1_700_000_000_123))

        assert [
            Alert(
                sensor_id="sensor-0001",
                kind="temperature_high",
                value=45.5,
                threshold=45.0,
                event_time=1_700_000_000_123,
                event_id=EVENT_ID,
            )
        ] == alerts

    def test_exactly_at_the_threshold_is_not_a_crossing(self, rules: AlertRules) -> None:
        """The value must go beyond the threshold, not just touch it."""
        assert [] == kinds(rules, reading(temperature=45.0, humidity=90.0))

    def test_both_measures_can_alert_at_once(self, rules: AlertRules) -> None:
        """One reading may raise a temperature and a humidity alert."""
        assert ["temperature_high", "humidity_high"] == kinds(
            rules, reading(temperature=50.0, humidity=95.0)
        )

    def test_low_thresholds(self, rules: AlertRules) -> None:
        """Below temperature_low and humidity_low raise the *_low kinds."""
        assert ["temperature_low", "humidity_low"] == kinds(
            rules, reading(temperature=-10.5, humidity=9.0)
        )

    def test_sensors_are_independent(self, rules: AlertRules) -> None:
        """One sensor's latched alert does not silence another sensor."""
        assert ["temperature_high", "temperature_high"] == kinds(
            rules,
            reading(temperature=50.0, sensor_id="a"),
            reading(temperature=50.0, sensor_id="b"),
        )


class TestHysteresis:
    def test_no_flood_while_hovering_at_the_threshold(self, rules: AlertRules) -> None:
        """Values jittering around 45 °C raise a single alert."""
        hovering = [45.1, 44.9, 45.2, 43.5, 45.3, 44.0, 45.05]

        assert ["temperature_high"] == kinds(rules, *(reading(temperature=t) for t in hovering))

    def test_rearms_after_returning_past_the_hysteresis(self, rules: AlertRules) -> None:
        """Back to high - hysteresis (43 °C) re-arms: the next crossing alerts again."""
        assert ["temperature_high", "temperature_high"] == kinds(
            rules,
            reading(temperature=46.0),
            reading(temperature=43.0),
            reading(temperature=46.0),
        )

    def test_low_rearms_at_low_plus_hysteresis(self, rules: AlertRules) -> None:
        """humidity_low (10 %) re-arms at 15 %, not at 14.9 %."""
        assert ["humidity_low", "humidity_low"] == kinds(
            rules,
            reading(humidity=9.0),
            reading(humidity=14.9),
            reading(humidity=9.0),
            reading(humidity=15.0),
            reading(humidity=9.0),
        )

    def test_kinds_latch_separately(self, rules: AlertRules) -> None:
        """A latched temperature alert does not hold back a humidity alert."""
        assert ["temperature_high", "humidity_high"] == kinds(
            rules, reading(temperature=50.0), reading(temperature=50.0, humidity=95.0)
        )

    def test_latched_kinds_are_visible(self, rules: AlertRules) -> None:
        """latched() shows what is latched, and forgets it once re-armed."""
        rules.evaluate(reading(temperature=-20.0))
        latched = rules.latched("sensor-0001")

        rules.evaluate(reading(temperature=0.0))

        assert (frozenset({"temperature_low"}), frozenset()) == (
            latched,
            rules.latched("sensor-0001"),
        )


class TestThresholds:
    def test_custom_thresholds(self) -> None:
        """Thresholds and hysteresis are configurable."""
        rules = AlertRules(AlertThresholds(temperature_high=30.0, temperature_hysteresis=0.0))

        assert ["temperature_high", "temperature_high"] == kinds(
            rules, reading(temperature=31.0), reading(temperature=30.0), reading(temperature=31.0)
        )

    @pytest.mark.parametrize(
        "bad",
        [
            {"temperature_low": 50.0},
            {"humidity_high": 5.0},
            {"temperature_hysteresis": -1.0},
        ],
    )
    def test_rejects_inconsistent_thresholds(self, bad: dict[str, float]) -> None:
        """low must be below high and hysteresis not negative."""
        with pytest.raises(ValueError, match="must be"):
            AlertThresholds(**bad)
