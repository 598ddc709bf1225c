"""The redelivery window: event ids seen recently, oldest forgotten first."""

from __future__ import annotations

from sensorstream.bridge._recent import RecentEvents


class TestRecentEvents:
    def test_an_id_is_new_once(self) -> None:
        """The first sighting is new, a repeat is not."""
        recent = RecentEvents(10)
        assert [True, False, True] == [recent.first_time(i) for i in ("a", "a", "b")]

    def test_the_oldest_ids_are_forgotten_beyond_capacity(self) -> None:
        """With capacity 2, the third id pushes the first out."""
        recent = RecentEvents(2)
        for event_id in ("a", "b", "c"):
            recent.first_time(event_id)
        assert (False, True, True, 2) == ("a" in recent, "b" in recent, "c" in recent, len(recent))

    def test_capacity_zero_remembers_nothing(self) -> None:
        """--dedup-window 0: every message is produced, repeats included."""
        recent = RecentEvents(0)
        assert [True, True] == [recent.first_time("a"), recent.first_time("a")]
        assert 0 == recent.seed(["a", "b"])

    def test_a_seed_larger_than_capacity_is_kept_whole(self) -> None:
        """The seed (the topic's end, per partition) grows the window to hold all of it."""
        recent = RecentEvents(2)
        assert 3 == recent.seed(["a", "b", "c", "a"])
        assert not any(recent.first_time(i) for i in ("a", "b", "c"))
        assert 3 == recent.capacity
