"""SeqRanges: a set of seqs as sorted half-open ranges."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sensorstream.audit import SeqRanges


def ranges_of(values: list[int]) -> SeqRanges:
    ranges = SeqRanges()
    for v in values:
        ranges.add(v)
    return ranges


class TestSeqRanges:
    def test_a_contiguous_run_is_one_range(self) -> None:
        """Adding 0..999 in order leaves a single range."""
        ranges = ranges_of(list(range(1000)))

        assert [(0, 999)] == ranges.ranges()
        assert 1000 == len(ranges)

    def test_add_reports_what_was_there_already(self) -> None:
        """add() returns how many of the added values were members before."""
        ranges = SeqRanges()

        assert 0 == ranges.add(0, 9)
        assert 5 == ranges.add(5, 14)
        assert 3 == ranges.add(12, 12) + ranges.add(0, 1)
        assert [(0, 14)] == ranges.ranges()

    def test_holes_merge_when_filled(self) -> None:
        """Ranges on both sides of a filled hole become one."""
        ranges = ranges_of([0, 1, 2, 6, 7])
        assert [(0, 2), (6, 7)] == ranges.ranges()

        ranges.add(3, 5)

        assert [(0, 7)] == ranges.ranges()

    def test_count_within(self) -> None:
        """count() counts members in an inclusive range across several ranges."""
        ranges = ranges_of([0, 1, 2, 6, 7, 10])

        assert 3 == ranges.count(1, 6)
        assert 0 == ranges.count(3, 5)
        assert 6 == ranges.count(0, 100)
        assert 0 == ranges.count(5, 4)

    def test_difference(self) -> None:
        """difference() keeps what is in none of the others."""
        ranges = ranges_of(list(range(20)))
        covered = ranges_of([*range(0, 5), *range(8, 15)])
        dead = ranges_of([6])

        assert [(5, 5), (7, 7), (15, 19)] == ranges.difference(covered, dead).ranges()

    @given(st.lists(st.integers(0, 200), max_size=200), st.integers(0, 200), st.integers(0, 60))
    def test_behaves_like_a_set(self, values: list[int], first: int, width: int) -> None:
        """Membership, size, count and add's answer agree with a plain set."""
        ranges = ranges_of(values)
        plain = set(values)
        last = first + width

        overlap = ranges.add(first, last)
        expected_overlap = len(plain & set(range(first, last + 1)))
        plain |= set(range(first, last + 1))

        assert expected_overlap == overlap
        assert len(plain) == len(ranges)
        assert sorted(plain) == list(ranges)
        assert all((v in ranges) == (v in plain) for v in range(-1, 265))
        assert len([v for v in plain if 50 <= v <= 120]) == ranges.count(50, 120)
        bounds = [b for pair in ranges.ranges() for b in pair]
        assert bounds == sorted(bounds)
