"""The processor service's process-wide set-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sensorstream.processor._service import tune_gc


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
