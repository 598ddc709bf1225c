"""The HTTP side every service exposes: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the event loop is alive (a liveness probe);
``/readyz`` answers 200 only when the service's readiness check says so and 503
otherwise, with a small JSON body saying why. ``/metrics`` is the Prometheus
text format of the default registry (including the process collector).

Who can reach these endpoints, by default and when protected:

- **Address.** ``--metrics-host`` defaults to 127.0.0.1, so outside a container only
  the machine itself can connect; the container images set 0.0.0.0 so that
  Prometheus and the orchestrator's probes can reach the pod.
- **Basic auth** (off unless ``--metrics-auth-username`` and a password are set).
  When on, it guards all three endpoints: a request without the right user *and*
  password, or with a malformed ``Authorization`` header, gets 401 with
  ``WWW-Authenticate: Basic realm="sensorstream"``. Both parts are compared in
  constant time.
- **TLS** (off unless ``--metrics-tls-certfile`` and ``--metrics-tls-keyfile`` are
  set): the endpoints are then served over HTTPS only. A certificate or key that
  cannot be loaded is a :class:`~sensorstream.schema.ConfigError` at start-up.

This module must never log or echo a credential, not even a wrong one.
"""

from __future__ import annotations

import base64
import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import SecretStr

from sensorstream.schema import ConfigError

if TYPE_CHECKING:
    from .settings import ServiceSettings

__all__ = ["ObservabilityServer", "Readiness"]

# A readiness check returns (ready, details); details end up in the /readyz body.
Readiness = Callable[[], tuple[bool, dict[str, Any]]]

_CHALLENGE = {hdrs.WWW_AUTHENTICATE: 'Basic realm="sensorstream"'}

_Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _tls_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """A server context for ``certfile``/``keyfile``; ConfigError naming the flags if bad."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = " ".join(str(exc.strerror or exc).split())
        raise ConfigError(
            f"cannot load the metrics TLS certificate {str(certfile)!r} with key "
            f"{str(keyfile)!r} ({reason}); check --metrics-tls-certfile / "
            "SENSORSTREAM_METRICS_TLS_CERTFILE and --metrics-tls-keyfile / "
            "SENSORSTREAM_METRICS_TLS_KEYFILE (PEM files, the key unencrypted and "
            "matching the certificate)"
        ) from exc
    return context


class _BasicAuth:
    """Checks an ``Authorization`` header against one user and password.

    Runs on every scrape: one partition, one base64 decode of a few dozen bytes and
    two constant-time compares; no exception unless the header is malformed.
    """

    __slots__ = ("_password", "_user")

    def __init__(self, user: str, password: SecretStr) -> None:
        self._user = user.encode()
        self._password = password.get_secret_value().encode()

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text in the header
            return False
        user, colon, password = decoded.partition(b":")
        # Both compares always run, so the time says nothing about which part was wrong.
        user_ok = hmac.compare_digest(user, self._user)
        password_ok = hmac.compare_digest(password, self._password)
        return bool(colon) and user_ok and password_ok


class ObservabilityServer:
    """A small aiohttp server on the service's metrics address.

    Start it before connecting to Kafka so that a failing start-up is visible
    (``/healthz`` 200, ``/readyz`` 503) rather than a silent, unreachable pod.

    ``auth`` (user, password) turns on basic auth for every endpoint; ``ssl_context``
    serves them over HTTPS. A service builds both from its settings with
    :meth:`from_settings`.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
        auth: tuple[str, SecretStr] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._registry = registry
        self._auth = _BasicAuth(*auth) if auth is not None else None
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    @classmethod
    def from_settings(
        cls,
        settings: ServiceSettings,
        *,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
    ) -> Self:
        """The server the settings describe: address, basic auth and TLS.

        Raises ConfigError if the TLS certificate or key cannot be loaded.
        """
        user, password = settings.metrics_auth_username, settings.metrics_auth_password
        certfile, keyfile = settings.metrics_tls_certfile, settings.metrics_tls_keyfile
        # The settings model rejects half a pair; a half pair here must not pass quietly.
        if (user is None) != (password is None) or (certfile is None) != (keyfile is None):
            raise ConfigError(
                "--metrics-auth-username needs --metrics-auth-password(-file), and "
                "--metrics-tls-certfile needs --metrics-tls-keyfile"
            )
        auth = (user, password) if user is not None and password is not None else None
        ssl_context = None
        if certfile is not None and keyfile is not None:
            ssl_context = _tls_context(certfile, keyfile)
        return cls(
            host=settings.metrics_host,
            port=settings.metrics_port,
            readiness=readiness,
            registry=registry,
            auth=auth,
            ssl_context=ssl_context,
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._guarded(self._metrics))
        app.router.add_get("/healthz", self._guarded(self._healthz))
        app.router.add_get("/readyz", self._guarded(self._readyz))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self._host,
            self._port,
            reuse_address=True,
            ssl_context=self._ssl_context,
        )
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

    def _guarded(self, handler: _Handler) -> _Handler:
        """``handler`` behind basic auth when it is on; ``handler`` itself when it is off."""
        auth = self._auth
        if auth is None:
            return handler

        async def guarded(request: web.Request) -> web.Response:
            if auth.allows(request.headers.get(hdrs.AUTHORIZATION)):
                return await handler(request)
            return web.Response(status=401, text="401: Unauthorized\n", headers=_CHALLENGE)

        return guarded

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, details = self._readiness()
        return _json(200 if ready else 503, {"ready": ready, **details})
