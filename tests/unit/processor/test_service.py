"""The processor service's process-wide set-up."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sensorstream.processor._metrics import ProcessorMetrics
from sensorstream.processor._service import ProcessorService, tune_gc
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.runtime import load_settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class TestTuneGc:
    def test_freezes_start_up_objects_and_raises_the_young_threshold(
        self, restored_gc: None
    ) -> None:
        """Start-up objects leave the collected generations; gen 0 collects far less often."""
        tune_gc()

        assert gc.get_freeze_count() > 0
        assert 50_000 == gc.get_threshold()[0]


class HangingMembership:
    def __init__(self) -> None:
        self.cancelled = False

    async def leave(self, grace: float) -> None:
        await asyncio.sleep(60)

    def cancel_all(self) -> None:
        self.cancelled = True


class QuickMembership(HangingMembership):
    async def leave(self, grace: float) -> None:
        return None


class HangingClient:
    def __init__(self) -> None:
        self.stopping = False

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.sleep(60)


class StoppedClient:
    async def stop(self) -> None:
        return None


class TestShutdown:
    async def test_a_shutdown_that_runs_out_of_time_exits_non_zero(self) -> None:
        """Workers that do not finish within --shutdown-timeout: exit 1, tasks cancelled."""
        settings = load_settings(ProcessorSettings, ["--shutdown-timeout", "0.2"])
        membership = HangingMembership()
        service = ProcessorService(settings, ProcessorMetrics(CollectorRegistry()))

        with capture_logs() as logs:
            status = await service._shutdown(membership)  # type: ignore[arg-type]

        assert (1, True) == (status, membership.cancelled)
        assert "shutdown_timed_out" in [e["event"] for e in logs]

    async def test_a_shutdown_in_time_exits_zero(self) -> None:
        """Everything drained and committed within the timeout: exit 0."""
        settings = load_settings(ProcessorSettings, ["--shutdown-timeout", "5"])
        service = ProcessorService(settings, ProcessorMetrics(CollectorRegistry()))

        assert 0 == await service._shutdown(QuickMembership())  # type: ignore[arg-type]

    async def test_clients_that_hang_on_close_cannot_hold_the_exit(self) -> None:
        """A consumer and outputs that never finish closing (a broker gone silent) are given
        what is left of the shutdown timeout, then the process exits 1."""
        settings = load_settings(ProcessorSettings, ["--shutdown-timeout", "0.2"])
        service = ProcessorService(settings, ProcessorMetrics(CollectorRegistry()))
        await service._shutdown(QuickMembership())  # type: ignore[arg-type]
        consumer, outputs = HangingClient(), HangingClient()

        with capture_logs() as logs:
            status = await asyncio.wait_for(service._close_clients(consumer, outputs, 0), 5)

        assert (1, True, True) == (status, consumer.stopping, outputs.stopping)
        assert "outputs_close_timed_out" in [e["event"] for e in logs]

    async def test_clients_that_close_keep_the_status(self) -> None:
        """Clients that close in time leave the shutdown's own status."""
        settings = load_settings(ProcessorSettings, [])
        service = ProcessorService(settings, ProcessorMetrics(CollectorRegistry()))

        status = await service._close_clients(StoppedClient(), StoppedClient(), 0)

        assert 0 == status
