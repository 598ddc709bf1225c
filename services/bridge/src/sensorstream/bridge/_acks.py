"""Which MQTT messages may be acknowledged now: in arrival order, once Kafka has them.

The forwarding loop hands Kafka a *round*: every message it took from the MQTT inbox at
once, as one batch per partition. A round is settled when each of its batches is
acknowledged by Kafka (or, for a round of redeliveries only, at once). Messages are
acknowledged in the order they arrived, which MQTT requires, so a round is released only
when it and every round before it are settled: :meth:`AckQueue.release` pops them from
the front. A round's batches are acknowledged out of order across partitions, which is
why the queue, and not the Kafka callbacks, decides.

Each round names the connection (:class:`~sensorstream.bridge._mqtt.MqttLink`) its
messages came on: a released round whose connection has ended is *abandoned*, not
acknowledged — its packet ids mean nothing on the next connection, and the broker
redelivers its messages there.

Pure: no Kafka, no MQTT, no clock. The forwarding loop owns the queue; Kafka's callbacks
run on the same event loop thread.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["AckQueue", "Round"]

L = TypeVar("L")


class Round(Generic[L]):
    """Messages taken from one connection's inbox together, and the batches they await."""

    __slots__ = ("link", "mids", "pending", "started")

    def __init__(self, link: L, mids: list[int], pending: int, started: float) -> None:
        self.link = link
        self.mids = mids
        """The messages' packet ids, in arrival order."""
        self.pending = pending
        """Kafka batches of this round not yet acknowledged."""
        self.started = started
        """When the round was handed to Kafka (for the latency histogram)."""

    @property
    def settled(self) -> bool:
        return self.pending == 0


class AckQueue(Generic[L]):
    """The rounds in arrival order, and the messages they hold that await an ack."""

    __slots__ = ("_rounds", "in_flight")

    def __init__(self) -> None:
        self._rounds: deque[Round[L]] = deque()
        self.in_flight = 0
        """Messages in rounds not released yet."""

    def __len__(self) -> int:
        return len(self._rounds)

    def front(self) -> Round[L] | None:
        """The oldest round not released yet."""
        return self._rounds[0] if self._rounds else None

    def open(self, link: L, mids: list[int], pending: int, started: float) -> Round[L]:
        """Queue a round of ``mids`` that waits for ``pending`` batches (0: settled now)."""
        round_ = Round(link, mids, pending, started)
        self._rounds.append(round_)
        self.in_flight += len(mids)
        return round_

    def settle(self, round_: Round[L]) -> None:
        """One of ``round_``'s batches was acknowledged by Kafka."""
        if round_.pending <= 0:
            raise ValueError("this round has no batch left to settle")
        round_.pending -= 1

    def add_pending(self, round_: Round[L], batches: int = 1) -> None:
        """``round_`` waits for ``batches`` more (handed over while it was open)."""
        round_.pending += batches

    def release(self) -> list[Round[L]]:
        """The settled rounds at the front, in order, taken off the queue."""
        rounds = self._rounds
        released: list[Round[L]] = []
        while rounds and rounds[0].pending == 0:
            round_ = rounds.popleft()
            self.in_flight -= len(round_.mids)
            released.append(round_)
        return released
