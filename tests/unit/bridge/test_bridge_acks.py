"""The ack queue: messages released in arrival order, only once their rounds are settled."""

from __future__ import annotations

import pytest

from sensorstream.bridge._acks import AckQueue


class TestAckQueue:
    def test_a_round_is_released_when_its_batches_are_settled(self) -> None:
        """A round waiting for two batches comes out after the second one."""
        queue: AckQueue[str] = AckQueue()
        round_ = queue.open("link", [1, 2, 3], 2, 0.0)
        queue.settle(round_)
        assert [] == queue.release()
        queue.settle(round_)
        assert [[1, 2, 3]] == [r.mids for r in queue.release()]
        assert 0 == queue.in_flight

    def test_rounds_settled_out_of_order_are_released_in_order(self) -> None:
        """A later round settled first waits for the earlier one (PUBACKs keep MQTT order)."""
        queue: AckQueue[str] = AckQueue()
        first = queue.open("link", [1], 1, 0.0)
        second = queue.open("link", [2, 3], 1, 0.0)
        queue.settle(second)
        assert [] == queue.release()
        assert 3 == queue.in_flight
        queue.settle(first)
        assert [[1], [2, 3]] == [r.mids for r in queue.release()]

    def test_a_round_without_batches_is_released_at_once(self) -> None:
        """Redeliveries only (nothing to produce): settled as soon as those before it are."""
        queue: AckQueue[str] = AckQueue()
        queue.open("link", [9], 0, 0.0)
        assert [[9]] == [r.mids for r in queue.release()]

    def test_pending_batches_can_be_added_while_open(self) -> None:
        """A round handed over batch by batch is not released between two hand-overs."""
        queue: AckQueue[str] = AckQueue()
        round_ = queue.open("link", [1], 1, 0.0)
        queue.add_pending(round_)
        queue.settle(round_)
        assert [] == queue.release()
        queue.settle(round_)
        assert 1 == len(queue.release())

    def test_settling_more_than_pending_is_a_bug(self) -> None:
        """A batch settled twice raises instead of releasing messages early."""
        queue: AckQueue[str] = AckQueue()
        round_ = queue.open("link", [1], 0, 0.0)
        with pytest.raises(ValueError, match="no batch left"):
            queue.settle(round_)
