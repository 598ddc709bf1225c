"""Specification of the replay's pacing (``--rate``)."""

from __future__ import annotations

import pytest

from sensorstream.cli._dlq import RatePacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestRatePacer:
    def test_unlimited_never_waits(self) -> None:
        """No rate (or 0): every record goes at once."""
        clock = Clock()
        assert [0.0] * 5 == [RatePacer(None, clock=clock).reserve() for _ in range(5)]
        assert [0.0] * 5 == [RatePacer(0, clock=clock).reserve() for _ in range(5)]

    def test_records_are_spaced_by_one_over_the_rate(self) -> None:
        """At 10/s the k-th record of a burst waits k/10 s: 10 records take 0.9 s + 0.1."""
        pacer = RatePacer(10, clock=Clock())
        assert [pytest.approx(k / 10) for k in range(10)] == [pacer.reserve() for _ in range(10)]

    def test_holds_the_rate_when_the_sender_sleeps(self) -> None:
        """A sender that waits what it is told sends exactly ``rate`` records a second."""
        clock = Clock()
        pacer = RatePacer(50, clock=clock)
        start = clock.now
        for _ in range(500):
            clock.now += pacer.reserve()
        assert pytest.approx(499 / 50) == clock.now - start

    def test_after_a_pause_it_catches_up_a_quarter_second_at_most(self) -> None:
        """At 20/s, after 10 s idle: 0.25 s worth (5) and the due one go at once, then
        the slots are 1/20 s apart again; the other 9.75 s are not saved up."""
        clock = Clock()
        pacer = RatePacer(20, clock=clock)
        pacer.reserve()
        clock.now += 10.0
        assert [0.0] * 6 + [pytest.approx(0.05), pytest.approx(0.1)] == [
            pacer.reserve() for _ in range(8)
        ]

    def test_a_commit_pause_is_made_up_for(self) -> None:
        """A sender that stalls 0.1 s every 10 records still averages the rate."""
        clock = Clock()
        pacer = RatePacer(100, clock=clock)
        start = clock.now
        for i in range(1000):
            clock.now += pacer.reserve()
            if i % 10 == 9:
                clock.now += 0.1 if i < 990 else 0.0
        assert pytest.approx(999 / 100, rel=0.02) == clock.now - start

    def test_a_negative_rate_is_refused(self) -> None:
        """The message quotes it."""
        with pytest.raises(ValueError, match=r"rate must be >= 0 records/s, got -1"):
            RatePacer(-1)
