"""Specification of the observability HTTP server (sensorstream.runtime.http)."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from sensorstream.runtime import ConfigError, ObservabilityServer


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("sensorstream_test_things_total", "Things.", registry=registry).inc(3)
    return registry


class TestObservabilityServer:
    async def test_serves_metrics_health_and_readiness(self, registry: CollectorRegistry) -> None:
        """/metrics has the registry, /healthz is 200, /readyz follows the check."""
        ready = {"value": False}
        server = ObservabilityServer(
            host="127.0.0.1",
            port=0,
            readiness=lambda: (ready["value"], {"why": "test"}),
            registry=registry,
        )
        await server.start()
        base = f"http://127.0.0.1:{server.bound_port}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/metrics") as response:
                    metrics = await response.text()
                async with session.get(f"{base}/healthz") as response:
                    health = response.status
                async with session.get(f"{base}/readyz") as response:
                    not_ready = (response.status, await response.json())
                ready["value"] = True
                async with session.get(f"{base}/readyz") as response:
                    now_ready = response.status
        finally:
            await server.stop()

        assert "sensorstream_test_things_total 3.0" in metrics
        assert 200 == health
        assert (503, {"ready": False, "why": "test"}) == not_ready
        assert 200 == now_ready

    async def test_port_in_use_is_a_config_error_naming_the_setting(self) -> None:
        """A taken port is reported as a bad --metrics-port, not a traceback."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = ObservabilityServer(host="127.0.0.1", port=port, readiness=lambda: (True, {}))

            with pytest.raises(ConfigError, match="SENSORSTREAM_METRICS_PORT"):
                await server.start()
