"""The adaptive slowdown's start rate: its cuts at refusals, a spent window's pause, its probes.

How the rate is cut, refined, paused and probed, and why, is told in
:mod:`._slowdown`'s docstring, beside the other knobs (the rate is its
``limiter``; the pause, ``paused_until``: both driven by refusals). These are
the parts of :class:`~._slowdown.Slowdown` that set them: a mixin of the one
object, over the state it declares here (``Slowdown.__init__`` sets it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._rate import RateLimit
from ._starts import SLOT

if TYPE_CHECKING:
    from ._latency_limit import LatencyLimit
    from ._starts import StartLog

__all__ = [
    "HOLD",
    "LOCKOUT",
    "MARGIN",
    "MIN_CAP",
    "MIN_RATE",
    "PROBES",
    "PROBE_FIRST",
    "WINDOW",
    "SlowdownRate",
]

WINDOW = 1.0  # seconds over which a server counts its budget, unless it says otherwise
MARGIN = 0.95  # pace at this share of the estimated budget
CLIMB = 2.0  # a young estimate's rate grows this much per round trip
LOCKOUT = 5  # refusals after a cut that mean the window is spent
PROBES = 8  # trickle calls per pause
JITTER = 0.1  # a pause lasts up to this share longer than Retry-After
HOLD = 1.0  # seconds at a new rate before probing above it
WINDOWED_HOLD = 3.0  # the same, once a lockout was seen
PROBE_STEP = 0.25  # seconds between probe steps
PROBE_FIRST = 0.02  # the first probe step's rise
MAX_RISE = 0.5  # the largest probe step's rise (a capacity that doubled back: 6 steps)
WINDOWED_RISE = 0.05  # the same, once a lockout was seen
MIN_RATE = 0.1  # calls per second
YOUNG_FLOOR = 1.0  # calls per second: the least a young window's estimate starts at
MIN_CAP = 4  # calls in flight: the least a cap on them learned from refusals holds
SLOW_CLIMB = 0.05  # seconds: the climb counts answers a round trip late for calls this slow


class SlowdownRate:
    """How a :class:`~._slowdown.Slowdown` sets the start rate (see :mod:`._slowdown`)."""

    workers: int
    ceiling: float | None
    limiter: RateLimit | None
    paused_until: float
    pauses: int
    lowest: float | None
    _random: Callable[[], float] | None
    _latency: LatencyLimit
    _log: StartLog
    _begun: float
    _first_refusal: bool
    _reacted: float
    _reacted_call: float
    _changed: float
    _episode: list[int]
    _pending: tuple[float, float, float | None, float] | None
    _streak: int
    _windowed: bool
    _climbing: bool
    _next_step: float
    _rise: float
    _pause: tuple[float, float] | None
    _concurrency_cap: int
    _delivered: int
    _last_step: float
    _previous_rate: float
    _cap: int
    _cap_learning: int | None
    _cap_raise: float

    def _cut(self, now: float, started: float) -> None:
        """A call started after the last cut was refused: cut now, refine soon."""
        self._reacted = now
        self._reacted_call = started
        self._streak = 0
        # The first refusal with no rate yet: the window estimate. With your
        # rate= in force, the share of it the server accepted.
        rate = None if self._first_refusal and self.ceiling is None else self._rate()
        self._pending = (self._settle_time(now, started), started, rate, self._changed)
        if rate is None:
            cut = max(self._per_window(started), YOUNG_FLOOR)
        elif self._climbing:
            cut = rate / CLIMB
        elif self._windowed:
            cut = self._per_window(started)
        else:
            accepted, refused = self._episode
            cut = rate * (accepted + 1) / (accepted + refused + 1)
        self._first_refusal = False
        self._climbing = False
        self._next_step = math.inf
        self._set(min(cut, rate or math.inf) * MARGIN, now, provisional=True)
        self._latency.hold(now + HOLD)

    def _settle_time(self, now: float, started: float) -> float:
        """When the answers to the calls started before ``started`` should all be in."""
        latency = self._latency.latency
        if not latency:
            return math.inf  # no call accepted yet: wait for the first
        return max(now + 2 * (now - started), started + 1.5 * latency) + SLOT

    def _settle(self, now: float, started: float, rate: float | None, since: float) -> None:
        """The answers to the calls started before the refused one are in: refine the cut."""
        if self._cap_learning is not None:
            if MIN_CAP <= self._cap_learning < self.workers:
                self._cap = self._cap_learning
                self._cap_raise = now + HOLD
            self._cap_learning = None
        if rate is None or self._windowed:
            young = started - max(started - WINDOW, self._begun) < 0.9 * WINDOW
            self._climbing = young and not self._windowed
            estimate = self._per_window(started)
            self._target(MARGIN * max(estimate, YOUNG_FLOOR if young else MIN_RATE), now)
        elif not self._climbing:
            accepted, refused = self._log.counts(since, started)
            self._target(MARGIN * rate * (accepted + 1) / (accepted + refused + 1), now)
        self._rise = PROBE_FIRST
        begin = max(now, self.paused_until)
        if self._climbing:
            self._next_step = begin + max(self._latency.latency, SLOT)
            self._previous_rate = self._pause[1] if self._pause is not None else self._rate()
        else:
            self._next_step = begin + (WINDOWED_HOLD if self._windowed else HOLD)
        self._log.forget(now - 2 * WINDOW)

    def _locked_out(self, now: float) -> bool:
        """Are the calls started since the last cut, old enough to be answered, refused?"""
        latency = self._latency.latency
        if not latency:
            return False
        accepted, refused = self._log.counts(self._reacted, now - latency)
        return refused >= LOCKOUT and accepted < 0.2 * (accepted + refused)

    def _lockout(self, now: float, retry_after: float | None) -> None:
        """Refusals go on after the cut: the window is spent, and everyone waits it out.

        A trickle of calls (``PROBES`` per pause, one at a time) checks whether
        the limit lifted sooner than Retry-After said; the first one accepted
        ends the pause.
        """
        self._windowed = True
        self._climbing = False
        self._streak = 0
        self._reacted = now
        self._first_refusal = False
        self.pauses += 1
        if self.limiter is None:
            self.limiter = RateLimit(1.0)
        jitter = (self._random or _uniform)()
        pause = (retry_after if retry_after is not None else WINDOW) * (1 + JITTER * jitter)
        after = self._pause[1] if self._pause is not None else self.limiter.per_second
        self._pause = (now + pause, after)
        self.paused_until = now + pause / PROBES
        self._concurrency_cap = 1
        self.limiter.set_rate(PROBES / pause)
        if self._pending is None:
            settle = self._settle_time(now, self._reacted_call)
            self._pending = (settle, self._reacted_call, self.limiter.per_second, self._changed)

    def _end_pause(self, now: float) -> None:
        assert self._pause is not None
        rate = self._pause[1]
        self._pause = None
        self.paused_until = -math.inf
        self._concurrency_cap = self.workers
        self._set(rate, now)
        self._next_step = now + (WINDOWED_HOLD if self._windowed else HOLD)

    def _target(self, rate: float, now: float) -> None:
        """Set the rate, or the rate to resume at when the pause ends."""
        if self._pause is not None:
            self._pause = (self._pause[0], rate)
        else:
            self._set(rate, now)

    def _step(self, now: float) -> None:
        rate = self._rate()
        self._last_step = now
        if self._climbing:
            # Clocked by the answers, as TCP's slow start: at most twice the
            # rate the server was seen to accept during the last step.
            latency = self._latency.latency
            step = max(latency, SLOT)
            delivered = self._delivered / step
            if latency >= SLOW_CLIMB:
                # Slow calls: what came back in this step was started a round
                # trip ago, at the last step's rate (half this one while it
                # doubles). Counting it against this rate would double every
                # other round trip: seconds of ramp at 100 ms a call.
                delivered *= min(rate / self._previous_rate, CLIMB)
            self._previous_rate = rate
            self._set(max(rate, min(rate * CLIMB, CLIMB * delivered)), now)
            self._next_step = now + step
        else:
            self._set(rate * (1 + self._rise), now)
            self._rise = min(2 * self._rise, WINDOWED_RISE if self._windowed else MAX_RISE)
            self._next_step = now + PROBE_STEP

    def _rate(self) -> float:
        assert self.limiter is not None
        return self.limiter.per_second

    def _set(self, rate: float, now: float, provisional: bool = False) -> None:
        """Set the start rate; a provisional cut (refined soon) is not the lowest."""
        rate = max(MIN_RATE, rate)
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        if not provisional:  # (the first rate, a cut, a refined cut: whichever is lowest)
            self.lowest = rate if self.lowest is None else min(self.lowest, rate)
        if self.limiter is None:
            self.limiter = RateLimit(rate)
        else:
            self.limiter.set_rate(rate)
        self._changed = now
        self._episode = [0, 0]
        self._delivered = 0

    def _per_window(self, started: float) -> float:
        """Calls per second the server accepted in the window before ``started``."""
        return self._log.counts(started - WINDOW + SLOT, started)[0] / WINDOW


def _uniform() -> float:
    """``random.random()``; ``random`` is imported only by a run that needs it."""
    import random

    return random.random()
