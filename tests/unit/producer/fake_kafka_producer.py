"""Stand-ins for aiokafka's producer and batch builder, shared by the producer's unit tests.

Only what the sender uses: ``create_batch``, ``BatchBuilder.append`` / ``close``,
``send_batch`` (returning the batch's delivery future) and ``stop``.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["AckingProducer", "FakeBatch", "FakeProducer"]


class FakeBatch:
    """Holds up to ``capacity`` records of up to ``max_value`` bytes, like a BatchBuilder.

    ``append`` returns None when the batch is full or the value can never fit.
    """

    def __init__(self, capacity: int, max_value: int) -> None:
        self.capacity = capacity
        self.max_value = max_value
        self.records: list[tuple[bytes, bytes, int]] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: int) -> object | None:
        if len(self.records) >= self.capacity or len(value) > self.max_value:
            return None
        self.records.append((key, value, timestamp))
        return object()

    def close(self) -> None:
        self.closed = True

    @property
    def values(self) -> list[bytes]:
        return [value for _, value, _ in self.records]


class FakeProducer:
    """Records each send_batch and hands back a future the test settles.

    ``refusals`` are raised by the next send_batch calls, one each, before any is
    accepted (a refused batch was not taken, as with aiokafka's full-queue timeout);
    ``offered`` lists every batch offered, refused or not.
    """

    def __init__(self, capacity: int = 1000, max_value: int = 1000) -> None:
        self.capacity = capacity
        self.max_value = max_value
        self.refusals: list[BaseException] = []
        self.offered: list[FakeBatch] = []
        self.sent: list[tuple[int, FakeBatch, asyncio.Future[Any]]] = []
        self.stopped = False

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity, self.max_value)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.offered.append(batch)
        if self.refusals:
            raise self.refusals.pop(0)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((partition, batch, future))
        return future

    async def stop(self) -> None:
        self.stopped = True


class AckingProducer(FakeProducer):
    """Acknowledges each batch a loop step after taking it, like a healthy broker.

    With ``away`` set it still takes batches but never acknowledges them (the broker
    went away after the client took them); ``fail_next`` fails the next batch taken,
    and ``offered_at_failure`` is how many batches had been offered when its failure
    reached the sender.
    """

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__(capacity)
        self.away = False
        self.fail_next: BaseException | None = None
        self.offered_at_failure: int | None = None

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        future = await super().send_batch(batch, topic, partition=partition)
        loop = asyncio.get_running_loop()
        if self.fail_next is not None:
            # Runs just before the sender's own callback, which is added after this returns.
            future.add_done_callback(lambda _: self._note_failure())
            loop.call_soon(future.set_exception, self.fail_next)
            self.fail_next = None
        elif not self.away:
            loop.call_soon(future.set_result, None)
        return future

    def _note_failure(self) -> None:
        self.offered_at_failure = len(self.offered)
