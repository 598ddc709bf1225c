"""``sensorstream-sink`` / ``python -m sensorstream.sink``: run the sink."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sensorstream.runtime import StopSignal, load_settings, run_service

from ._service import SinkService, configure
from .settings import SinkSettings


def main(argv: Sequence[str] | None = None) -> None:
    """Parse settings (exit 2 on a bad one), run until SIGTERM/SIGINT, exit with the status."""
    settings = load_settings(SinkSettings, argv)
    configure(settings)

    async def run(stop: StopSignal) -> int:
        return await SinkService(settings).run(stop)

    sys.exit(run_service(run, prog=SinkSettings.service_name))


if __name__ == "__main__":
    main()
