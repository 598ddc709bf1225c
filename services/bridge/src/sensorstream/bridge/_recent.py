"""The event ids the bridge forwarded most recently: how it tells a redelivery from news.

QoS 1 is at least once: a message the broker delivered but never saw acknowledged (the
bridge crashed, or the connection broke, after Kafka had its record but before the
PUBACK) comes again. Every reading carries an ``event_id``, the contract's dedup key, so
a redelivered reading is recognised by its id and acknowledged without being produced a
second time. Only the newest ``capacity`` ids are kept: what can come again is at most
what was unacknowledged when the connection ended (``--max-in-flight``), so a window a
few times that size catches every redelivery of the bridge's own.

At start-up the window is seeded from the end of the input topic (``_seeding.py``), so a
bridge restarted after ``kill -9`` recognises what its predecessor forwarded too.

Pure, no I/O. :meth:`RecentEvents.first_time` runs once per reading: two set operations
and a deque append, no allocation beyond the entry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["RecentEvents"]


class RecentEvents:
    """The last ``capacity`` event ids seen, oldest forgotten first (``capacity`` 0: none)."""

    __slots__ = ("_ids", "_order", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def first_time(self, event_id: str) -> bool:
        """Remember ``event_id``; False if it is among the ones remembered already."""
        ids = self._ids
        if event_id in ids:
            return False
        if self.capacity:
            ids.add(event_id)
            order = self._order
            order.append(event_id)
            if len(order) > self.capacity:
                ids.discard(order.popleft())
        return True

    def seed(self, event_ids: Iterable[str]) -> int:
        """Remember ``event_ids`` (oldest first) and grow to hold them all; return how many
        were new. The seed is what the input topic ends with, per partition, so it may be
        larger than ``capacity``: the window keeps all of it until new ids push it out."""
        if not self.capacity:
            return 0
        added = 0
        for event_id in event_ids:
            if event_id not in self._ids:
                self._ids.add(event_id)
                self._order.append(event_id)
                added += 1
        self.capacity = max(self.capacity, len(self._order))
        return added
