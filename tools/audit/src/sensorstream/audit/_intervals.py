"""Sets of integers stored as sorted, disjoint half-open ranges.

A sensor's seqs are almost always one contiguous run (0..N-1), so a set of them costs a
few integers however many hours of data it holds: this is what bounds the audit's
memory. Adding the next seq of a run (the common case) is O(1); anything else is a
bisect plus a list splice.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

__all__ = ["SeqRanges"]


class SeqRanges:
    """A set of non-negative integers as ``[start0, end0, start1, end1, ...]`` (ends exclusive)."""

    __slots__ = ("_bounds",)

    def __init__(self) -> None:
        self._bounds: list[int] = []

    def __len__(self) -> int:
        b = self._bounds
        return sum(b[i + 1] - b[i] for i in range(0, len(b), 2))

    def __bool__(self) -> bool:
        return bool(self._bounds)

    def __contains__(self, value: int) -> bool:
        # An odd bisect index means value falls inside [start, end).
        return bisect_right(self._bounds, value) % 2 == 1

    def __repr__(self) -> str:
        return f"SeqRanges({self.ranges()!r})"

    @property
    def first(self) -> int | None:
        return self._bounds[0] if self._bounds else None

    @property
    def last(self) -> int | None:
        """The largest member (not the exclusive end)."""
        return self._bounds[-1] - 1 if self._bounds else None

    def ranges(self) -> list[tuple[int, int]]:
        """The members as inclusive ``(first, last)`` pairs, ascending."""
        b = self._bounds
        return [(b[i], b[i + 1] - 1) for i in range(0, len(b), 2)]

    def __iter__(self) -> Iterator[int]:
        b = self._bounds
        for i in range(0, len(b), 2):
            yield from range(b[i], b[i + 1])

    def add(self, first: int, last: int | None = None) -> int:
        """Add ``first..last`` (inclusive; one value when ``last`` is None).

        Returns how many of those values were members already.
        """
        start, end = first, (first if last is None else last) + 1
        b = self._bounds
        if not b or start > b[-1]:
            b += (start, end)
            return 0
        if start == b[-1]:  # the next seq of the newest run: the hot path
            b[-1] = end
            return 0
        before = self.count(start, end - 1)
        # Every bound inside [start, end] goes; start/end stay only if they fall outside.
        lo = bisect_left(b, start)
        hi = bisect_right(b, end)
        replacement = []
        if lo % 2 == 0:
            replacement.append(start)
        if hi % 2 == 0:
            replacement.append(end)
        b[lo:hi] = replacement
        return before

    def count(self, first: int, last: int) -> int:
        """How many members lie in ``first..last`` (inclusive)."""
        if last < first or not self._bounds:
            return 0
        b = self._bounds
        start, end = first, last + 1
        i = bisect_right(b, start)
        if i % 2 == 1:  # start is inside the run b[i-1]..b[i]
            i -= 1
        total = 0
        while i < len(b) and b[i] < end:
            total += min(b[i + 1], end) - max(b[i], start)
            i += 2
        return total

    def difference(self, *others: SeqRanges) -> SeqRanges:
        """The members of this set that are in none of ``others``."""
        result = SeqRanges()
        for first, last in self.ranges():
            pieces = [(first, last + 1)]
            for other in others:
                pieces = [part for s, e in pieces for part in other._outside(s, e)]
            for s, e in pieces:
                result._bounds += (s, e)
        return result

    def _outside(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of ``[start, end)`` that are not members."""
        b = self._bounds
        i = bisect_right(b, start)
        if i % 2 == 1:
            start = b[i]
            i += 1
        while start < end:
            if i >= len(b) or b[i] >= end:
                yield start, end
                return
            if b[i] > start:
                yield start, b[i]
            start = b[i + 1]
            i += 2
