"""Service wiring that needs no broker: profile choice and readiness before start-up."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from sensorstream.producer._pacing import (
    BurstProfile,
    ConstantProfile,
    PoissonProfile,
    SineProfile,
)
from sensorstream.producer._service import ProducerService, build_profile
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import StopSignal, load_settings


class TestBuildProfile:
    @pytest.mark.parametrize(
        ("name", "kind"),
        [
            ("constant", ConstantProfile),
            ("poisson", PoissonProfile),
            ("sine", SineProfile),
            ("burst", BurstProfile),
        ],
    )
    def test_profile_per_setting(self, name: str, kind: type) -> None:
        """--rate-profile picks the matching profile at the configured rate."""
        settings = load_settings(ProducerSettings, ["--rate-profile", name, "--rate", "40"])
        profile = build_profile(settings, 40.0)
        assert (kind, 40.0) == (type(profile), profile.rate)  # type: ignore[attr-defined]


class TestReadiness:
    def test_not_ready_before_start(self) -> None:
        """/readyz says 'starting' until the Kafka producer runs."""
        settings = load_settings(ProducerSettings, [])
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        assert (False, {"reason": "starting"}) == service.readiness()

    def test_max_rate_has_no_pacer(self) -> None:
        """--rate max sends as fast as acknowledged: no pacer."""
        settings = load_settings(ProducerSettings, ["--rate", "max"])
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        assert None is service.pacer
