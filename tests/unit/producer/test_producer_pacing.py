"""The rate pacer hands out events from absolute deadlines, for every profile."""

from __future__ import annotations

import pytest

from sensorstream.producer._pacing import (
    BurstProfile,
    ConstantProfile,
    PoissonProfile,
    RatePacer,
    SineProfile,
    TickGrid,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _pacer(profile: object, **bounds: float) -> tuple[RatePacer, FakeClock]:
    clock = FakeClock()
    pacer = RatePacer(profile, clock=clock, **bounds)  # type: ignore[arg-type]
    pacer.start()
    return pacer, clock


def _run(pacer: RatePacer, clock: FakeClock, seconds: float, tick: float) -> list[int]:
    # From a fixed origin, so float error does not pile up across ticks.
    origin = clock.now
    emitted = []
    for i in range(1, round(seconds / tick) + 1):
        clock.now = origin + i * tick
        emitted.append(pacer.due())
    return emitted


class TestConstantProfile:
    def test_first_event_is_due_at_start(self) -> None:
        """Event 0 is due at once, so a slow rate does not start with a pause."""
        pacer, _ = _pacer(ConstantProfile(0.1))
        assert 1 == pacer.due()

    def test_emits_rate_times_elapsed(self) -> None:
        """After 10 s at 1,000/s on 5 ms ticks, 10,001 events are out (0 .. 10 s inclusive)."""
        pacer, clock = _pacer(ConstantProfile(1000.0))
        first = pacer.due()
        emitted = _run(pacer, clock, 10.0, 0.005)
        assert 10_001 == first + sum(emitted)
        assert {5} == set(emitted)

    def test_before_excludes_the_event_at_now(self) -> None:
        """With ``before`` an event exactly at ``now`` waits for the next call."""
        pacer, clock = _pacer(ConstantProfile(10.0))
        assert 0 == pacer.due(before=True)
        clock.now += 0.1
        assert 1 == pacer.due(before=True)
        clock.now += 0.05
        assert 1 == pacer.due(before=True)
        assert 0 == pacer.due(before=True)

    def test_slow_rate(self) -> None:
        """At 0.1/s the second event comes exactly 10 s after the first."""
        pacer, clock = _pacer(ConstantProfile(0.1))
        assert 1 == pacer.due()
        clock.now += 9.999
        assert 0 == pacer.due()
        clock.now += 0.001
        assert 1 == pacer.due()

    def test_late_tick_catches_up_at_once(self) -> None:
        """A tick that comes 2 s late gets all 2 s of events, and later ticks are on schedule."""
        pacer, clock = _pacer(ConstantProfile(100.0))
        pacer.due()
        clock.now += 2.0
        assert 200 == pacer.due()
        clock.now += 0.01
        assert 1 == pacer.due()
        assert 0.0 == pacer.behind_seconds()

    def test_limit_leaves_backlog_and_reports_behind(self) -> None:
        """Capped by ``limit``, the rest stays owed and shows as seconds behind schedule."""
        pacer, clock = _pacer(ConstantProfile(100.0))
        pacer.due()
        clock.now += 5.0
        assert 200 == pacer.due(limit=200)
        assert 300 == pacer.backlog
        assert 3.0 == pytest.approx(pacer.behind_seconds())
        assert 300 == pacer.due()
        assert 0.0 == pacer.behind_seconds()

    def test_no_drift_over_many_ticks(self) -> None:
        """Irregular ticks add up to exactly the schedule: no error accumulates."""
        pacer, clock = _pacer(ConstantProfile(333.0))
        total = pacer.due()
        for step in [0.0031, 0.0072, 0.0049, 0.013] * 2500:
            clock.now += step
            total += pacer.due()
        elapsed = clock.now - pacer.started_at
        assert int(333.0 * elapsed) + 1 == total

    def test_duration_bounds_the_run(self) -> None:
        """A 5 s run at 2,000/s hands out exactly 10,000 events and then finishes."""
        pacer, clock = _pacer(ConstantProfile(2000.0), duration=5.0)
        total = pacer.due() + sum(_run(pacer, clock, 6.0, 0.005))
        assert 10_000 == total
        assert pacer.finished

    def test_count_bounds_the_run(self) -> None:
        """With ``count`` the pacer stops at that many events even when more are due."""
        pacer, clock = _pacer(ConstantProfile(1000.0), count=42)
        clock.now += 1.0
        assert 42 == pacer.due()
        assert pacer.finished
        clock.now += 1.0
        assert 0 == pacer.due()

    def test_unbounded_never_finishes(self) -> None:
        """Without count or duration the run goes on until stopped."""
        pacer, clock = _pacer(ConstantProfile(10.0))
        clock.now += 3600.0
        pacer.due()
        assert not pacer.finished


class TestPoissonProfile:
    def test_mean_rate(self) -> None:
        """Over 100 s at 500/s the arrivals count is within 2% of 50,000."""
        pacer, clock = _pacer(PoissonProfile(500.0, seed=7))
        total = sum(_run(pacer, clock, 100.0, 0.01))
        assert abs(total - 50_000) < 1_000

    def test_seeded_schedule_repeats(self) -> None:
        """The same seed gives the same arrivals tick by tick."""
        first, clock_a = _pacer(PoissonProfile(200.0, seed=3))
        second, clock_b = _pacer(PoissonProfile(200.0, seed=3))
        assert _run(first, clock_a, 5.0, 0.01) == _run(second, clock_b, 5.0, 0.01)

    def test_arrivals_are_irregular(self) -> None:
        """Unlike constant pacing, per-tick counts vary."""
        pacer, clock = _pacer(PoissonProfile(1000.0, seed=1))
        assert len(set(_run(pacer, clock, 1.0, 0.01))) > 3

    def test_catch_up_after_a_late_tick(self) -> None:
        """A late tick gets every arrival it missed; the total equals a punctual run's."""
        punctual, clock_a = _pacer(PoissonProfile(300.0, seed=11))
        late, clock_b = _pacer(PoissonProfile(300.0, seed=11))
        expected = sum(_run(punctual, clock_a, 4.0, 0.01))
        clock_b.now += 4.0
        assert expected == late.due()

    def test_duration_bound_matches_arrivals(self) -> None:
        """The duration bound counts the arrivals before the end, exactly."""
        pacer, clock = _pacer(PoissonProfile(300.0, seed=5), duration=2.0)
        limit = pacer.limit
        total = sum(_run(pacer, clock, 3.0, 0.01))
        free, free_clock = _pacer(PoissonProfile(300.0, seed=5))
        free_clock.now += 1.99999
        assert limit == total
        assert free.due() == total

    def test_before_gives_the_same_arrivals(self) -> None:
        """Asked with ``before`` tick by tick, a bounded run hands out exactly its limit."""
        pacer, clock = _pacer(PoissonProfile(300.0, seed=5), duration=2.0)
        origin = clock.now
        total = 0
        for i in range(1, 301):
            clock.now = origin + i * 0.01
            total += pacer.due(before=True)
        assert (pacer.limit, True) == (total, pacer.finished)


class TestSineProfile:
    def test_full_period_averages_the_rate(self) -> None:
        """Over whole periods the sine profile emits rate x time."""
        pacer, clock = _pacer(SineProfile(100.0, period=10.0, amplitude=0.5))
        total = pacer.due() + sum(_run(pacer, clock, 20.0, 0.01))
        assert 2001 == total

    def test_peak_and_trough(self) -> None:
        """The first half-period runs above the rate, the second below it."""
        pacer, clock = _pacer(SineProfile(100.0, period=10.0, amplitude=0.5))
        pacer.due()
        first_half = sum(_run(pacer, clock, 5.0, 0.01))
        second_half = sum(_run(pacer, clock, 5.0, 0.01))
        # 500 +- amplitude * rate * period / pi = 500 +- 159
        assert 659 == first_half
        assert 341 == second_half

    def test_rate_at(self) -> None:
        """The instantaneous rate swings by the amplitude."""
        profile = SineProfile(100.0, period=8.0, amplitude=0.25)
        assert 125.0 == pytest.approx(profile.rate_at(2.0))
        assert 75.0 == pytest.approx(profile.rate_at(6.0))

    def test_catch_up(self) -> None:
        """A late tick gets what the integral says was due."""
        pacer, clock = _pacer(SineProfile(100.0, period=10.0, amplitude=1.0))
        clock.now += 5.0
        assert 819 == pacer.due()


class TestBurstProfile:
    def test_burst_then_calm(self) -> None:
        """5 s at 10x then 5 s at 1x: 5,000 then 500 events at a base rate of 100/s."""
        pacer, clock = _pacer(BurstProfile(100.0, every=10.0, multiplier=10.0, duration=5.0))
        pacer.due()
        burst = sum(_run(pacer, clock, 5.0, 0.01))
        calm = sum(_run(pacer, clock, 5.0, 0.01))
        assert 5000 == burst
        assert 500 == calm

    def test_repeats_every_period(self) -> None:
        """The second cycle has the same shape as the first."""
        pacer, clock = _pacer(BurstProfile(100.0, every=10.0, multiplier=3.0, duration=2.0))
        pacer.due()
        first = sum(_run(pacer, clock, 10.0, 0.01))
        second = sum(_run(pacer, clock, 10.0, 0.01))
        assert 1400 == first
        assert first == second

    def test_rate_at(self) -> None:
        """The rate is multiplied inside the burst only."""
        profile = BurstProfile(50.0, every=10.0, multiplier=4.0, duration=1.0)
        assert [200.0, 50.0, 200.0] == [profile.rate_at(t) for t in (0.5, 5.0, 10.5)]

    def test_duration_must_be_shorter_than_period(self) -> None:
        """A burst as long as its period is refused."""
        with pytest.raises(ValueError, match="burst duration"):
            BurstProfile(10.0, every=5.0, multiplier=2.0, duration=5.0)

    def test_behind_uses_burst_rate(self) -> None:
        """Behind-schedule seconds are measured at the rate in force."""
        pacer, clock = _pacer(BurstProfile(100.0, every=10.0, multiplier=10.0, duration=5.0))
        pacer.due()
        clock.now += 1.0
        pacer.due(limit=0)
        assert 1.0 == pytest.approx(pacer.behind_seconds())


class TestRatePacerStart:
    def test_due_before_start_is_an_error(self) -> None:
        """Asking before ``start()`` is a programming error, said plainly."""
        pacer = RatePacer(ConstantProfile(1.0), clock=FakeClock())
        with pytest.raises(RuntimeError, match="start"):
            pacer.due()


class TestTickGrid:
    def test_ticks_on_time_follow_the_grid(self) -> None:
        """A loop that keeps up serves 0, 5, 10 ms ... after the start."""
        grid = TickGrid(100.0, interval=0.005, max_lag=1.0)
        ticks = [grid.take(100.0 + 0.005 * k + 0.0004) for k in range(4)]
        assert [100.0, 100.005, 100.01, 100.015] == pytest.approx(ticks)
        assert 0.0 == grid.behind(100.016)

    def test_pause_replays_missed_ticks_with_their_times(self) -> None:
        """After a 70 ms pause the missed ticks come one by one, each with its own time."""
        grid = TickGrid(0.0, interval=0.005, max_lag=1.0)
        grid.take(0.0)
        assert 0.066 == pytest.approx(grid.behind(0.071))
        ticks = [grid.take(0.071) for _ in range(15)]
        assert [0.005 * k for k in range(1, 16)] == pytest.approx(ticks)
        assert 0.0 == grid.behind(0.071)

    def test_far_behind_jumps_to_now(self) -> None:
        """More than ``max_lag`` behind, the grid restarts at now instead of replaying."""
        grid = TickGrid(0.0, interval=0.005, max_lag=1.0)
        grid.take(0.0)
        assert 5.0 == grid.take(5.0)
        assert 5.005 == pytest.approx(grid.take(5.0))

    def test_pacer_at_ticks_gives_the_schedule_per_tick(self) -> None:
        """Asked for what was due before each tick, the pacer gives each interval's events."""
        pacer, _ = _pacer(ConstantProfile(1_000.0))
        grid = TickGrid(pacer.started_at, interval=0.005, max_lag=1.0)
        late = pacer.started_at + 0.5  # the loop only runs half a second late
        per_tick = [pacer.due(grid.take(late), before=True) for _ in range(201)]
        assert [0] + [5] * 200 == per_tick

    def test_bad_interval(self) -> None:
        """A lag bound shorter than a tick makes no sense."""
        with pytest.raises(ValueError, match="interval"):
            TickGrid(0.0, interval=0.01, max_lag=0.001)
