"""The limit on calls in flight: a slow start, then what the latency says.

A server that slows down instead of refusing (a queue in front of a few
workers) only tells its clients through latency. This limit keeps the calls
in flight near what the server turns around without a queue:

- *Opening* (``slow_start=True``): the run starts with ``OPENING`` calls in
  flight. The limit doubles every ``DOUBLING`` seconds, at most once per look
  (a client too busy to look has not seen the answers that may be in), and
  each accepted call lets one more start (TCP's slow start: twice as many per
  round trip), until the server refuses a call, the latency rises (HyStart),
  or the limit reaches ``workers``.
- *Samples* (for a server that never refused a call): once per round trip
  the mean latency of the calls that came back is compared with the unloaded
  latency (the lowest mean over ``UNLOADED``
  seconds). Above ``QUEUE`` times it, a queue is building: the limit becomes
  the calls the server delivered per second times the unloaded latency (the
  bandwidth-delay product of TCP BBR), times ``HEADROOM``. Below
  ``GROW_BELOW`` times it, a limit that binds grows by a quarter per round
  trip (a path that got faster, or a cut the latency did not bear out).

Every method takes the time, so tests drive it exactly.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["OPENING", "LatencyLimit"]

OPENING = 16  # calls in flight before any call came back
DOUBLING = 0.01  # seconds per doubling of the opening, before any call came back
QUEUE = 2.0  # latency above this many times the unloaded one: a queue is building
HEADROOM = 1.2  # calls in flight per call the server turns around unloaded
GROW_BELOW = 1.25  # latency below this many times the unloaded one: room to grow
UNLOADED = 10.0  # seconds over which the lowest latency counts as the unloaded one
MIN_SAMPLE = 0.02  # seconds, the shortest sampling interval
SUSTAINED = 3  # round trips in a row above QUEUE before the limit is cut


class LatencyLimit:
    """How many calls may be in flight (``limit``), from the opening and the latency.

    >>> limit = LatencyLimit(workers=100, now=0.0)
    >>> limit.limit, round(limit.tick(0.025), 6), limit.limit  # time doubles it...
    (16, 0.005, 32)
    >>> limit.accepted(0.1, calls=1, latency=0.1, in_flight=31)
    >>> limit.limit  # ...and each accepted call lets one more start
    33
    """

    def __init__(self, workers: int, now: float, *, slow_start: bool = True) -> None:
        self.workers = workers
        self.limit = min(workers, OPENING) if slow_start else workers
        self.opening = self.limit < workers
        self._begun = now
        self._latency = 0.0  # smoothed latency of accepted calls
        self._sampled = math.nan  # when the current sample began
        self._next_sample = -math.inf
        self._sum, self._count = 0.0, 0
        self._lows: deque[tuple[float, float]] = deque()  # (when, mean) rising: a sliding min
        self._hold_until = -math.inf
        self._refusing = False
        self.follows = True  # latency may cut the limit (not for CPU work: see Slowdown)
        self._queued = 0  # samples in a row above QUEUE

    @property
    def latency(self) -> float:
        """The smoothed latency of accepted calls (0.0 before the first)."""
        return self._latency

    def tick(self, now: float) -> float | None:
        """Grow the opening with time; seconds until it grows again (None: it no longer does)."""
        if not self.opening:
            return None
        # At most twice as many per look: a client too busy to look (its own
        # first wave keeps it busy) has not seen the answers that may be in.
        doublings = min((now - self._begun) / DOUBLING, 60.0)
        self.limit = max(self.limit, min(2 * self.limit, math.floor(OPENING * 2**doublings)))
        if self.limit >= self.workers:
            self._end_opening()
            return None
        return DOUBLING - (now - self._begun) % DOUBLING

    def refused(self) -> None:
        """The server refused a call: it says its limit, and the rate takes it from here.

        Latency then no longer limits the calls in flight: a server that
        refuses above its limit has no queue to keep short, and latency that
        varies for other reasons (the client's own load) must not cut a run
        that the rate already paces.
        """
        self._refusing = True
        self.limit = self.workers
        self.opening = False

    def accepted(self, now: float, calls: int, latency: float, in_flight: int) -> None:
        """``calls`` calls came back accepted, taking ``latency`` seconds each."""
        if self._latency:
            self._latency = 0.8 * self._latency + 0.2 * latency
        else:
            self._latency = latency
        self._sum += latency * calls
        self._count += calls
        if now >= self._next_sample and not self._refusing and self.follows:
            self._sample(now, in_flight)
        if self.opening:
            self.limit += calls
            if self.limit >= self.workers:
                self._end_opening()

    def hold(self, until: float) -> None:
        """Do not grow before ``until`` (the rate was just cut)."""
        self._hold_until = max(self._hold_until, until)

    def _end_opening(self) -> None:
        self.opening = False
        self.limit = min(self.limit, self.workers)

    def _sample(self, now: float, in_flight: int) -> None:
        """Once per round trip: does the latency rise with the calls in flight?"""
        began, self._sampled = self._sampled, now
        mean = self._sum / self._count
        delivered = self._count
        self._sum, self._count = 0.0, 0
        self._next_sample = now + max(mean, MIN_SAMPLE)
        lows = self._lows
        while lows and lows[-1][1] >= mean:
            lows.pop()
        lows.append((now, mean))
        while lows[0][0] < now - UNLOADED:
            lows.popleft()
        unloaded = lows[0][1]
        ratio = mean / unloaded if unloaded > 0 else 1.0
        self._queued = self._queued + 1 if ratio > QUEUE else 0
        if self._queued >= SUSTAINED and now > began:
            fit = max(1, math.ceil(delivered / (now - began) * unloaded * HEADROOM))
            self.limit = min(self.limit, fit)
            if self.opening:
                self._end_opening()
            self._hold_until = now + mean
        elif (
            not self.opening
            and ratio < GROW_BELOW
            and self.limit < self.workers
            and now >= self._hold_until
            and in_flight >= 0.9 * self.limit
        ):
            self.limit = min(self.workers, self.limit + max(1, self.limit // 4))
