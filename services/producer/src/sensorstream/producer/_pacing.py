"""When events are due: rate profiles and a pacer that works from absolute deadlines.

A profile says how many events should have been emitted ``elapsed`` seconds after the
start (the integral of its rate). The pacer compares that with what it has handed out
and returns the difference: ``due(now)`` is how many events to emit *now*. Deadlines are
absolute (measured from the start time), so a late tick never shifts later ones: the
events it missed are due at once on the next tick (catch-up), and nothing drifts.

When the caller cannot keep up, the backlog left after a tick shows as
``behind_seconds`` rather than the rate quietly dropping. The clock is injected so
tests drive the pacer with a fake one. This module does no I/O and never logs.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Protocol

__all__ = [
    "BurstProfile",
    "Clock",
    "ConstantProfile",
    "PoissonProfile",
    "RatePacer",
    "RateProfile",
    "SineProfile",
    "TickGrid",
]


class Clock(Protocol):
    """A monotonic clock in seconds, like ``time.monotonic``."""

    def __call__(self) -> float: ...


class RateProfile(Protocol):
    """How the target rate varies over time since the start."""

    def scheduled(self, elapsed: float) -> int:
        """Events scheduled at times ``<= elapsed`` (non-decreasing in ``elapsed``)."""
        ...

    def scheduled_before(self, end: float) -> int:
        """Events scheduled at times ``< end``: the total of a run lasting ``end`` seconds."""
        ...

    def rate_at(self, elapsed: float) -> float:
        """The target rate at ``elapsed``, events per second."""
        ...


class _IntegralProfile:
    """A deterministic profile: event k is scheduled when the rate's integral reaches k."""

    def expected(self, elapsed: float) -> float:
        raise NotImplementedError

    def scheduled(self, elapsed: float) -> int:
        if elapsed < 0:
            return 0
        # Event 0 is at t=0, event k where the integral reaches k; the epsilon
        # absorbs float error at exact deadlines (k / rate).
        return math.floor(self.expected(elapsed) + 1e-9) + 1

    def scheduled_before(self, end: float) -> int:
        if end <= 0:
            return 0
        return math.ceil(self.expected(end) - 1e-9)


class ConstantProfile(_IntegralProfile):
    """``rate`` events per second, evenly spaced."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def expected(self, elapsed: float) -> float:
        return self.rate * elapsed

    def rate_at(self, elapsed: float) -> float:
        return self.rate


class SineProfile(_IntegralProfile):
    """``rate * (1 + amplitude * sin(2 pi t / period))``: a day/night style swing."""

    def __init__(self, rate: float, *, period: float, amplitude: float) -> None:
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError(f"amplitude must be in 0..1, got {amplitude}")
        self.rate = rate
        self.period = period
        self.amplitude = amplitude
        self._omega = 2.0 * math.pi / period

    def expected(self, elapsed: float) -> float:
        swing = self.amplitude / self._omega * (1.0 - math.cos(self._omega * elapsed))
        return self.rate * (elapsed + swing)

    def rate_at(self, elapsed: float) -> float:
        return self.rate * (1.0 + self.amplitude * math.sin(self._omega * elapsed))


class BurstProfile(_IntegralProfile):
    """``rate``, but ``multiplier`` times it for ``duration`` s at the start of each ``every`` s."""

    def __init__(self, rate: float, *, every: float, multiplier: float, duration: float) -> None:
        if not 0.0 < duration < every:
            raise ValueError(f"burst duration must be in (0, every={every}), got {duration}")
        self.rate = rate
        self.every = every
        self.multiplier = multiplier
        self.duration = duration
        self._per_cycle = rate * (every - duration + multiplier * duration)

    def expected(self, elapsed: float) -> float:
        cycles, into = divmod(elapsed, self.every)
        burst = min(into, self.duration)
        calm = into - burst
        return cycles * self._per_cycle + self.rate * (self.multiplier * burst + calm)

    def rate_at(self, elapsed: float) -> float:
        in_burst = elapsed % self.every < self.duration
        return self.rate * self.multiplier if in_burst else self.rate


class PoissonProfile:
    """A Poisson process of mean ``rate``: exponential gaps drawn from a seeded RNG.

    Arrival times are absolute, so catching up works as for the other profiles. Queries
    (``scheduled`` and ``scheduled_before`` alike) must come with non-decreasing times,
    as the pacer's do; to look ahead, query a copy.
    """

    def __init__(self, rate: float, *, seed: int | None = None) -> None:
        self.rate = rate
        self._rng = random.Random(seed)
        self._next_arrival = 0.0
        self._arrived = 0

    def _advance(self, elapsed: float, *, inclusive: bool) -> int:
        expovariate = self._rng.expovariate
        rate = self.rate
        arrival = self._next_arrival
        arrived = self._arrived
        while arrival < elapsed or (inclusive and arrival == elapsed):
            arrived += 1
            arrival += expovariate(rate)
        self._next_arrival = arrival
        self._arrived = arrived
        return arrived

    def scheduled(self, elapsed: float) -> int:
        if elapsed < 0:
            return 0
        return self._advance(elapsed, inclusive=True)

    def scheduled_before(self, end: float) -> int:
        if end <= 0:
            return 0
        return self._advance(end, inclusive=False)

    def rate_at(self, elapsed: float) -> float:
        return self.rate


class RatePacer:
    """Hands out the events that are due, from absolute deadlines since :meth:`start`.

    ``count`` and ``duration`` bound the run; :attr:`finished` turns true once every
    event of the bounded schedule has been handed out.
    """

    def __init__(
        self,
        profile: RateProfile,
        *,
        clock: Clock,
        count: int | None = None,
        duration: float | None = None,
    ) -> None:
        self.profile = profile
        self._clock = clock
        self._duration = duration
        limit = count
        if duration is not None:
            # From a copy: a profile with random state (poisson) must not draw ahead.
            in_duration = copy.deepcopy(profile).scheduled_before(duration)
            limit = in_duration if limit is None else min(limit, in_duration)
        self.limit = limit
        self.emitted = 0
        self.backlog = 0
        self._start: float | None = None

    def start(self, now: float | None = None) -> None:
        """Fix time zero of the schedule (now, unless given)."""
        self._start = self._clock() if now is None else now
        self.emitted = 0
        self.backlog = 0

    @property
    def started_at(self) -> float:
        if self._start is None:
            raise RuntimeError("RatePacer.start() was not called")
        return self._start

    def elapsed(self, now: float | None = None) -> float:
        return (self._clock() if now is None else now) - self.started_at

    def due(
        self, now: float | None = None, *, limit: int | None = None, before: bool = False
    ) -> int:
        """How many events to emit now (at most ``limit``); they count as emitted.

        Those scheduled at times up to ``now``, or with ``before`` strictly before it
        (then a loop asking at ticks T gets the events of each interval [T - tick, T)).
        """
        elapsed = self.elapsed(now)
        profile = self.profile
        total = profile.scheduled_before(elapsed) if before else profile.scheduled(elapsed)
        if self.limit is not None and total > self.limit:
            total = self.limit
        owed = total - self.emitted
        if owed <= 0:
            self.backlog = 0
            return 0
        give = owed if limit is None or owed <= limit else limit
        self.emitted += give
        self.backlog = owed - give
        return give

    def behind_seconds(self, now: float | None = None) -> float:
        """How far behind schedule the last :meth:`due` left us, in seconds of target rate."""
        if self.backlog <= 0:
            return 0.0
        rate = self.profile.rate_at(self.elapsed(now))
        return self.backlog / rate if rate > 0 else 0.0

    @property
    def finished(self) -> bool:
        """True once the bounded schedule (``count``/``duration``) has been handed out."""
        return self.limit is not None and self.emitted >= self.limit


class TickGrid:
    """The nominal times the producing loop serves: a grid of ``interval`` s from ``start``.

    Each :meth:`take` returns the next tick T on the grid. The loop asks the pacer what
    was due *before* T and stamps those events with T - interval, the start of the
    interval their schedule fell in, not the moment the process got the CPU back: after a pause
    (the process was descheduled for 70 ms, say) the missed ticks are served one after
    another, each with its own time. A loop more than ``max_lag`` behind stops replaying
    and jumps to ``now``, so timestamps never trail the wall clock by more than that.
    """

    def __init__(self, start: float, *, interval: float, max_lag: float) -> None:
        if interval <= 0 or max_lag < interval:
            raise ValueError(f"need 0 < interval <= max_lag, got {interval}, {max_lag}")
        self.start = start
        self.interval = interval
        self.max_lag = max_lag
        self._index = 0
        self._base = start

    @property
    def next_at(self) -> float:
        """When the next tick is due."""
        return self._base + self._index * self.interval

    def take(self, now: float) -> float:
        """The tick to serve now (the next on the grid, or ``now`` if too far behind)."""
        tick = self.next_at
        if now - tick > self.max_lag:
            # Re-anchor the grid at now rather than accumulate float error by adding.
            self._base, self._index, tick = now, 0, now
        self._index += 1
        return tick

    def behind(self, now: float) -> float:
        """Seconds the next tick is overdue at ``now`` (0 while the loop keeps up)."""
        return max(0.0, now - self.next_at)
