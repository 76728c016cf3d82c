"""Adaptive slowdown (draft v4 for simulation)."""

from __future__ import annotations

import math
import random as _random
from collections import deque
from collections.abc import Callable

from ._rate import RateLimit

__all__ = ["Slowdown"]

WINDOW = 1.0
SLOT = 0.01
MARGIN = 0.95
OPENING = 16
DOUBLING = 0.005  # seconds: the opening doubles the calls in flight this often, at least
JITTER = 0.1
CLIMB = 2.0
LOCKOUT = 5
MIN_RATE = 0.1
MIN_SAMPLE = 10
PROBES = 8  # trickle calls per pause
HOLD = 1.0  # seconds at a new rate before probing above it
PROBE_STEP = 0.25  # seconds between probe steps
PROBE_FIRST = 0.02  # the first probe step's rise; it doubles each quiet step
QUEUE = 1.5  # latency above this many times the unloaded one: a queue is building
EXPAND = 1.2
UNLOADED = 10.0
GROW_BELOW = 1.25
MAX_RISE = 0.25
WINDOWED_RISE = 0.05
WINDOWED_HOLD = 3.0
SLACK = 2


class Slowdown:
    def __init__(
        self,
        workers: int,
        ceiling: float | None = None,
        *,
        now: float = 0.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.workers = workers
        self._begun = now
        self.ceiling = ceiling
        self.limiter: RateLimit | None = RateLimit(ceiling) if ceiling else None
        self.concurrency = min(workers, OPENING)
        self.paused_until = -math.inf
        self.epoch = 0
        self.throttled = 0
        self._random = random
        self._opening = True
        self._accepted: dict[int, int] = {}
        self._rejected: dict[int, int] = {}
        self._first: float | None = None
        self._reacted = -math.inf  # calls started before it were answered by the last reaction
        self._changed = -math.inf  # the last change of the rate
        self._since = [0, 0]  # calls started since then: accepted, rejected
        self._pending: tuple[float, float, float | None, float] | None = None
        self._streak = 0
        self._windowed = False
        self._climbing = False
        self._next_step = math.inf
        self._rise = PROBE_FIRST
        self._latency = 0.0  # smoothed latency of accepted calls
        self._unloaded = math.inf  # the lowest smoothed latency seen
        self._trickle: tuple[float, float, int] | None = None  # pause end, rate after, concurrency
        self._next_sample = -math.inf
        self._sampled = -math.inf
        self._sum, self._count, self._delivered = 0.0, 0, 0
        self._lows: deque[tuple[float, float]] = deque()
        self._grow_after = -math.inf
        self._opening_cut = False
        self._ending = False
        self._answered = False  # no call has come back yet

    @property
    def settled_rate(self) -> float | None:
        return None if self.limiter is None else self.limiter.per_second

    @property
    def settled_concurrency(self) -> int | None:
        return None if self.concurrency >= self.workers else self.concurrency

    # -- signals ---------------------------------------------------------

    def completed(
        self,
        now: float,
        started: float,
        throttled: bool,
        retry_after: float | None,
        in_flight: int,
    ) -> None:
        self._answered = True
        if self._first is None or started < self._first:
            self._first = started
        if started >= self._changed:
            self._since[throttled] += 1
        if not throttled:
            self._accept(now, started, in_flight)
            return
        self.throttled += 1
        slot = int(started / SLOT)
        self._rejected[slot] = self._rejected.get(slot, 0) + 1
        if started < self._reacted:
            return
        self._streak += 1
        if self._streak >= LOCKOUT and self._locked_out(now):
            self._lockout(now, retry_after)
        elif self._pending is None and (
            self.limiter is None or self._climbing or sum(self._since) >= MIN_SAMPLE
        ):
            self._react(now, started)
            self.concurrency = self.workers if self._opening_cut else self.concurrency
            self._grow_after = now + HOLD

    def _accept(self, now: float, started: float, in_flight: int) -> None:
        slot = int(started / SLOT)
        self._accepted[slot] = self._accepted.get(slot, 0) + 1
        latency = now - started
        if not self._latency and self._pending is not None:
            _, first, rate, since = self._pending
            self._pending = (first + 1.5 * latency + SLOT, first, rate, since)
        self._latency = latency if not self._latency else 0.8 * self._latency + 0.2 * latency
        self._sum += latency
        self._count += 1
        self._delivered += 1
        if started >= self._reacted:
            self._streak = 0
        if self._trickle is not None and started >= self._reacted:
            self._end_pause(now)
        if now >= self._next_sample:
            self._sample(now, in_flight)
        if self._opening:
            self.concurrency += 1
            if self.concurrency >= self.workers:
                self._opening = False
                self.concurrency = self.workers

    def _sample(self, now: float, in_flight: int) -> None:
        """Once per round trip: does latency rise with the calls in flight?

        The unloaded latency is the lowest mean of a round trip's calls (over
        the last UNLOADED seconds); the calls the server turns around in that
        time (delivery rate x unloaded latency, the bandwidth-delay product of
        TCP BBR) are what it serves without a queue.
        """
        interval = now - self._sampled
        mean = self._sum / self._count
        self._sampled, self._sum, self._count = now, 0.0, 0
        self._next_sample = now + max(mean, 2 * SLOT)
        lows = self._lows
        while lows and lows[-1][1] >= mean:
            lows.pop()
        lows.append((now, mean))
        while lows[0][0] < now - UNLOADED:
            lows.popleft()
        unloaded = lows[0][1]
        ratio = mean / unloaded
        if ratio > QUEUE and interval > 0:
            self._opening = False
            delivered = self._delivered / interval
            fit = max(1, math.ceil(delivered * unloaded * EXPAND))
            self.concurrency = min(self.concurrency, fit, self.workers)
            self._grow_after = now + mean
        elif (
            not self._opening
            and ratio < GROW_BELOW
            and self.concurrency < self.workers
            and now >= self._grow_after
            and in_flight >= self.concurrency - 1
        ):
            self.concurrency = min(self.workers, self.concurrency + max(1, self.concurrency // 10))
        self._delivered = 0

    def ending(self) -> None:
        """No more input: what is left are the calls in flight and the retries."""
        self._ending = True

    def _locked_out(self, now: float) -> bool:
        """Most calls started since the last reaction, and old enough to be answered, refused?"""
        if not self._latency:
            return False
        low, high = int(self._reacted / SLOT), int((now - self._latency) / SLOT)
        if high < low:
            return False
        accepted = sum(n for k, n in self._accepted.items() if low <= k <= high)
        rejected = sum(n for k, n in self._rejected.items() if low <= k <= high)
        return rejected >= LOCKOUT and accepted < 0.2 * (accepted + rejected)

    def due(self, now: float) -> float | None:
        wake: float | None = None
        if self._opening and not self._answered:
            doublings = (now - self._begun) / DOUBLING
            self.concurrency = max(self.concurrency, math.floor(OPENING * 2 ** min(doublings, 60)))
            if self.concurrency >= self.workers:
                self._opening = False
                self.concurrency = self.workers
            else:
                wake = DOUBLING - (now - self._begun) % DOUBLING
        nxt = self._due(now)
        if wake is None:
            return nxt
        return wake if nxt is None else min(wake, nxt)

    def _due(self, now: float) -> float | None:
        if self._trickle is not None and now >= self._trickle[0]:
            self._end_pause(now)
        if self._pending is not None:
            when, started, rate, since = self._pending
            if now < when:
                return when - now if when < math.inf else None
            self._pending = None
            self._settle(now, started, rate, since)
        if self.limiter is None or self._trickle is not None:
            return None if self._trickle is None else self._trickle[0] - now
        if now >= self._next_step:
            if self._ending and not self._climbing:
                self._next_step = math.inf
                return None
            self._step(now)
        return self._next_step - now if self._next_step < math.inf else None

    # -- reactions -------------------------------------------------------

    def _react(self, now: float, started: float) -> None:
        """A call started after the last reaction was refused: cut now, refine soon."""
        self._opening_cut = self._opening
        self._reacted = now
        self._streak = 0
        self._opening = False
        rate = None if self.limiter is None else self.limiter.per_second
        settle = self._settle_time(now, started)
        self._pending = (settle, started, rate, self._changed)
        if rate is None:
            self.limiter = RateLimit(1.0)
            cut = self._per_window(started)
        elif self._climbing:
            cut = rate / CLIMB
        elif self._windowed:
            cut = self._per_window(started)
        else:
            cut = self._accepted_share() * rate
        self._climbing = False
        self._next_step = math.inf
        self._set(min(cut, rate or math.inf) * MARGIN, now)

    def _settle_time(self, now: float, started: float) -> float:
        """When the answers to calls started before ``started`` should all be in."""
        if not self._latency:  # no call accepted yet: wait for the first
            return math.inf
        return max(now + 2 * (now - started), started + 1.5 * self._latency) + SLOT

    def _settle(self, now: float, started: float, rate: float | None, since: float) -> None:
        """The answers to calls started before the refused one are in: refine the cut."""
        assert self.limiter is not None
        if rate is None or self._windowed:
            estimate = self._per_window(started)
            self._climbing = not self._windowed and self._active(started) < 0.9 * WINDOW
            self._target(MARGIN * estimate, now)
        elif not self._climbing:
            low, high = int(since / SLOT), int(started / SLOT)
            accepted = sum(n for k, n in self._accepted.items() if low <= k <= high)
            rejected = sum(n for k, n in self._rejected.items() if low <= k <= high)
            share = (accepted + 1) / (accepted + rejected + 1)
            self._target(MARGIN * rate * share, now)
        self._rise = PROBE_FIRST
        begin = max(now, self.paused_until)
        hold = WINDOWED_HOLD if self._windowed else HOLD
        self._next_step = begin + (max(self._latency, SLOT) if self._climbing else hold)

    def _lockout(self, now: float, retry_after: float | None) -> None:
        """Refusals after the cut too: the window is spent; everyone waits it out.

        A trickle of calls (PROBES per pause, one at a time) checks whether the
        limit lifted sooner than Retry-After said (a fixed window that resets
        on the second); the first one accepted ends the pause.
        """
        self._windowed = True
        self._climbing = False
        self._streak = 0
        self._reacted = now
        if self.limiter is None:
            self.limiter = RateLimit(1.0)
        pause = retry_after if retry_after is not None else WINDOW
        pause *= 1 + JITTER * self._random()
        after = self._trickle[1] if self._trickle is not None else self.limiter.per_second
        concurrency = self._trickle[2] if self._trickle is not None else self.concurrency
        self._trickle = (now + pause, after, concurrency)
        self.paused_until = now + pause / PROBES
        self.concurrency = 1
        self.limiter.set_rate(PROBES / pause)
        self.epoch += 1
        if self._pending is None:
            self._pending = (now + SLOT, now, self.limiter.per_second, self._changed)

    def _end_pause(self, now: float) -> None:
        assert self._trickle is not None and self.limiter is not None
        _, rate, concurrency = self._trickle
        self._trickle = None
        self.paused_until = -math.inf
        self.concurrency = concurrency
        self._set(rate, now)
        self._next_step = now + (WINDOWED_HOLD if self._windowed else HOLD)

    def _target(self, rate: float, now: float) -> None:
        """Set the rate, or the rate to resume at when a pause ends."""
        if self._trickle is not None:
            end, _, concurrency = self._trickle
            self._trickle = (end, rate, concurrency)
        else:
            self._set(rate, now)

    def _step(self, now: float) -> None:
        assert self.limiter is not None
        rate = self.limiter.per_second
        if self._climbing:
            self._set(rate * CLIMB, now)
            self._next_step = now + max(self._latency, SLOT)
        else:
            self._set(rate * (1 + self._rise), now)
            self._rise = min(2 * self._rise, WINDOWED_RISE if self._windowed else MAX_RISE)
            self._next_step = now + PROBE_STEP

    def _set(self, rate: float, now: float) -> None:
        assert self.limiter is not None
        rate = max(MIN_RATE, rate)
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        self.limiter.set_rate(rate)
        self.epoch += 1
        self._changed = now
        self._since = [0, 0]

    # -- estimates -------------------------------------------------------

    def _accepted_share(self) -> float:
        accepted, rejected = self._since
        return (accepted + 1) / (accepted + rejected + 1)

    def _per_window(self, started: float) -> float:
        low, high = int((started - WINDOW) / SLOT), int(started / SLOT)
        self._accepted = {s: n for s, n in self._accepted.items() if s > low - 100}
        self._rejected = {s: n for s, n in self._rejected.items() if s > low - 100}
        return sum(n for slot, n in self._accepted.items() if low < slot <= high) / WINDOW

    def _active(self, started: float) -> float:
        low = max(started - WINDOW, self._first if self._first is not None else started)
        return max(started - low, 0.0)
