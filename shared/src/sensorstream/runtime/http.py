"""The HTTP side every service exposes: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the event loop is alive (a liveness probe);
``/readyz`` answers 200 only when the service's readiness check says so and 503
otherwise, with a small JSON body saying why. ``/metrics`` is the Prometheus
text format of the default registry (including the process collector).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from sensorstream.schema import ConfigError

__all__ = ["ObservabilityServer", "Readiness"]

# A readiness check returns (ready, details); details end up in the /readyz body.
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class ObservabilityServer:
    """A small aiohttp server on the service's metrics address.

    Start it before connecting to Kafka so that a failing start-up is visible
    (``/healthz`` 200, ``/readyz`` 503) rather than a silent, unreachable pod.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port} ({exc.strerror or exc}); "
                "choose another --metrics-port / SENSORSTREAM_METRICS_PORT "
                "(or --metrics-host / SENSORSTREAM_METRICS_HOST)"
            ) from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, details = self._readiness()
        return _json(200 if ready else 503, {"ready": ready, **details})
