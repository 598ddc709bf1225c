"""``sensorstream-mqtt-bridge`` / ``python -m sensorstream.bridge``: parse settings, run, exit."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sensorstream.runtime import StopSignal, load_settings, run_service

from ._service import run
from .settings import BridgeSettings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script; exits with the service's status."""
    settings = load_settings(BridgeSettings, argv)

    async def service(stop: StopSignal) -> int:
        return await run(settings, stop)

    sys.exit(run_service(service, prog=BridgeSettings.service_name))


if __name__ == "__main__":
    main()
