"""``sensorstream-processor`` / ``python -m sensorstream.processor``: run the processor."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sensorstream.runtime import StopSignal, load_settings, run_service

from ._service import ProcessorService, configure, configure_tracing
from .settings import ProcessorSettings


def main(argv: Sequence[str] | None = None) -> None:
    """Parse settings (exit 2 on a bad one), run until SIGTERM/SIGINT, exit with the status."""
    settings = load_settings(ProcessorSettings, argv)
    configure(settings)

    async def run(stop: StopSignal) -> int:
        configure_tracing(settings)  # in here, so a bad OTEL_* value exits 2 with one line
        return await ProcessorService(settings).run(stop)

    sys.exit(run_service(run, prog=ProcessorSettings.service_name))


if __name__ == "__main__":
    main()
