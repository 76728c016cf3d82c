"""Adaptive slowdown: how fast and how many calls a limited server takes.

The engine obeys three knobs and reports every answer (when its call
started, whether the server refused it, its latency, its Retry-After).
Which signal drives which knob:

==========================  ===============================================
knob (the engine obeys)     driven by
==========================  ===============================================
``paused_until``: no call   refusals that go on after the rate was cut (the
starts before it            server's window is spent): everyone waits out its
                            Retry-After, not only the refused items, with
                            jitter; one call at a time, ``PROBES`` per pause,
                            checks whether the limit lifted sooner (a window
                            that resets on the second), and ends the pause
``limiter``: the start      refusals (429, or ``throttle_on=``): cut to the
rate (GCRA)                 server's budget, then probe above it
``concurrency``: calls in   the opening's slow start, then latency
flight                      (:mod:`._latency_limit`); and refusals that
                            come only while a given number of calls is out
                            (a server that caps the calls in progress): a
                            cap there, which they cut instead of the rate
                            (see ``_cap_refusal``)
==========================  ===============================================

The rate, as the field learned it (TCP, Google SRE's client-side throttling,
the window estimate that held up in simulation):

- Until the first refusal there is no rate limit beyond the user's ``rate=``.
- A refusal of a call started after the last reaction is an *episode*: at most
  one cut per episode, and the answers to calls started before a cut say
  nothing about the new rate. The cut is provisional (what is known at once)
  and refined once the calls started before the refused one have answered.
- The first episode (or any after a lockout) estimates the server's budget
  per ``WINDOW`` as the accepted calls *started* in the window before the
  refused call (counting answers instead undercounts, as calls in flight
  answer later), and paces at ``MARGIN`` of it. If the run is younger than a
  window that is a floor, not the budget (a token bucket's burst): the rate
  then *climbs*, doubling every round trip until the next refusal, which
  halves it (TCP's slow start).
- Later episodes cut to the share of the calls started at the current rate
  that the server accepted (requests vs accepts, as in Google SRE's adaptive
  throttling), times ``MARGIN``.
- Refusals that go on after a cut (``LOCKOUT`` of them, at most a fifth of the
  answered calls accepted) mean a spent window: a pause (above), and from then
  on the window estimate, rare gentle probes (``WINDOWED_HOLD``), because
  overshooting a window that counts refusals locks the client out.
- After ``HOLD`` seconds without a refusal the rate probes upward, by
  ``PROBE_FIRST`` and doubling each ``PROBE_STEP`` up to ``MAX_RISE``: short
  probes return fast to a capacity that recovered (TCP CUBIC's idea), and
  each costs a few refusals when it did not. Once the input is exhausted
  there is no probing: a late refusal would make its item wait out a
  Retry-After at the end of the run.
- The rate never exceeds the user's ``rate=`` and never falls below
  ``MIN_RATE``.

The rate's code, and these constants, are in :mod:`._slowdown_rate` (a
mixin of :class:`Slowdown`).

Every method takes the time (``now``, seconds, ``time.monotonic`` in the
engine), so the tests drive the controller on a fake clock against the
models of :mod:`._servers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._latency_limit import LatencyLimit
from ._rate import RateLimit
from ._slowdown_rate import HOLD, LOCKOUT, MIN_CAP, PROBE_FIRST, WINDOW, SlowdownRate
from ._starts import StartLog

__all__ = ["OPENING_SHARE", "Slowdown", "sooner"]

MIN_EPISODE = 10  # calls answered at the current rate before a new cut is judged
REMOTE = 1e-3  # seconds: calls this slow may be a server's
OPENING_SHARE = 8  # the opening (asyncio): a batch is at most this share of the limit
PROVEN = 10  # round trips without a refusal before threads queue a batch ahead
# The opening's slow start spares a server a first wave of thousands of calls
# (2,000 asyncio tasks against 200/s: 2-4% refused in most runs instead of
# 48%); the engine asks for it on asyncio, where every task is a call at once,
# and on threads (100 threads against a token bucket's burst of 10: 90 calls
# refused at once, 4.5% of a 2,000-item run by itself).
SLOW_START = False


class Slowdown(SlowdownRate):
    """The start rate, calls in flight and pause a limited server asks for.

    >>> slow = Slowdown(workers=100, now=0.0)
    >>> slow.limiter is None, slow.concurrency, slow.watching
    (True, 100, True)
    >>> for n in range(200):  # 200 calls accepted in the first 20 ms
    ...     slow.completed(0.02 + n * 1e-4, started=n * 1e-4, latency=0.01, in_flight=50)
    >>> slow.completed(0.0401, started=0.04, throttled=1, retry_after=1.0)
    >>> slow.due(0.2) is not None and round(slow.limiter.per_second)  # the budget, just under
    190
    """

    def __init__(
        self,
        workers: int,
        ceiling: float | None = None,
        *,
        now: float = 0.0,
        slow_start: bool = SLOW_START,
        ramp_loads: bool = True,
        random: Callable[[], float] | None = None,
    ) -> None:
        self.workers = workers
        self._slow_start = slow_start
        self._ramp_loads = ramp_loads  # the opening's ramp loads the client (asyncio)
        self.ceiling = ceiling  # the user's rate=, if any
        self.limiter: RateLimit | None = RateLimit(ceiling) if ceiling else None
        self.paused_until = -math.inf
        self.throttled = 0  # calls that asked to slow down
        self.pauses = 0
        self.lowest: float | None = None  # the lowest rate a cut went to
        self._random = random  # (None: random.random, imported when first needed)
        self._latency = self._new_latency_limit(now)
        self._begun = self._clock = now
        self._log = StartLog()
        self._first_refusal = True
        self._reacted = -math.inf  # calls started before it were answered by the last cut
        self._changed = -math.inf  # the last change of the rate
        self._episode = [0, 0]  # calls started since then: accepted, refused
        self._pending: tuple[float, float, float | None, float] | None = None
        self._streak = 0  # refusals of calls started after the last cut, in a row
        self._windowed = False  # a lockout was seen: the window estimate holds
        self._climbing = False
        self._next_step = math.inf
        self._rise = PROBE_FIRST
        self._pause: tuple[float, float] | None = None  # (end, the rate after it)
        self._concurrency_cap = workers  # while paused: one call at a time
        self._ending = False
        self._clock = now
        self._delivered = 0  # accepted answers since the last change of the rate
        self._last_step = now
        self._previous_rate = math.inf  # the climb's rate a step ago
        self._reacted_call = now  # when the call the last cut answered started
        # A cap on the calls in flight, learned from refusals (see _cap_refusal).
        self._cap = workers
        self._cap_learning: int | None = workers  # (the first episode's fewest out at a refusal)
        self._cap_cut = -math.inf  # when the cap was last cut
        self._cap_raise = math.inf  # when it may grow by one
        self._cap_bound = False  # calls in flight reached the cap since it was set
        self._in_flight = 0

    def start(self, now: float) -> None:
        """The run starts at ``now`` (the opening counts from it)."""
        self._begun = self._clock = now
        follows = self._latency.follows
        self._latency = self._new_latency_limit(now)
        if not follows:
            self.ignore_latency()

    def _new_latency_limit(self, now: float) -> LatencyLimit:
        return LatencyLimit(
            self.workers, now, slow_start=self._slow_start, ramp_loads=self._ramp_loads
        )

    def ignore_latency(self) -> None:
        """Latency never limits the calls in flight (calls on worker processes).

        A CPU-bound call's latency grows with the load on the cores (other runs
        of a Pool, other programs), or on threads with the calls taking turns on
        the GIL, not with a server's queue: fewer calls in flight would only
        leave cores idle. A limit the latency set goes; refusals still slow the
        run down.
        """
        self._latency.let_go()

    # -- what the engine obeys -------------------------------------------

    @property
    def concurrency(self) -> int:
        """How many calls may be in flight."""
        return min(self._latency.limit, self._concurrency_cap, self._cap)

    @property
    def watching(self) -> bool:
        """Whether the engine must report every answer (else only refusals).

        It watches the opening, the first ``WINDOW`` of a run whose calls take
        ``REMOTE`` or more (they may be a server's, whose budget the first
        window spends), a latency that rose above ``QUEUE`` times the unloaded
        one until it falls back or is confirmed, and from the first refusal or
        latency limit on. Any other run costs nothing more once its opening is
        over.
        """
        latency = self._latency
        remote = not latency.latency or latency.latency >= REMOTE
        return (
            latency.opening
            or latency.limit < self.workers
            or self.throttled > 0
            or latency.rising  # (a queue may be building: see whether it lasts)
            or (remote and self._clock < self._begun + WINDOW)
        )

    @property
    def opening(self) -> bool:
        """The opening's slow start still limits the calls in flight."""
        return self._latency.opening

    @property
    def unlimited(self) -> bool:
        """Nothing has limited the run yet: no refusal, no rate, no cut of the calls in flight."""
        return (
            self.throttled == 0
            and self.limiter is None
            and self._latency.limit >= self.workers
            and not self._latency.opening
        )

    @property
    def proven(self) -> bool:
        """``PROVEN`` round trips came back and nothing limited the run (see ``unlimited``).

        A server's limit shows in the first few round trips of a run that
        exceeds it; from here on a batch per worker may wait ahead of the
        workers (threads), and the first refusal ends that.
        """
        latency = self._latency.latency
        return latency > 0 and self._clock - self._begun >= PROVEN * latency and self.unlimited

    @property
    def settled_rate(self) -> float | None:
        """The start rate in force (calls/s), None if the server never asked for one."""
        if self.limiter is None or self._first_refusal:
            return None
        return self._pause[1] if self._pause is not None else self.limiter.per_second

    @property
    def settled_concurrency(self) -> int | None:
        """The calls in flight allowed, None if no limit below ``workers`` was needed.

        A cap learned from refusals counts once the calls in flight reached it:
        a window server's first refusals may leave one (the fewest calls out
        when one came back) that the rate then keeps the run well under.
        """
        limit = self.workers if self._latency.opening else self._latency.settled
        if self._cap_bound:
            limit = min(limit, self._cap)
        return None if limit >= self.workers else limit

    def summary(self) -> str:
        """A few words for the progress line: what the slowdown holds the run to now."""
        parts = []
        rate = self.settled_rate
        if rate is not None:
            parts.append(f"rate {rate:.4g}/s")
        limit = self.settled_concurrency
        if limit is not None:
            parts.append(f"{limit} in flight at most")
        if self._pause is not None:
            parts.append("paused")
        return ", ".join(parts)

    # -- signals -----------------------------------------------------------

    def completed(
        self,
        now: float,
        started: float,
        calls: int = 1,
        throttled: int = 0,
        latency: float = 0.0,
        retry_after: float | None = None,
        in_flight: int = 0,
    ) -> None:
        """``calls`` calls started at ``started`` came back; ``throttled`` of them refused.

        ``latency`` is the accepted calls' mean duration, ``retry_after`` the
        largest delay a refusal asked for, ``in_flight`` the calls still out.
        """
        self._clock = now
        self._in_flight = in_flight
        if self._cap < self.workers and in_flight >= self._cap - 1:
            self._cap_bound = True  # (it binds: this call left cap - 1 others out)
        accepted = calls - throttled
        self._log.add(started, accepted, throttled)
        if started >= self._changed:
            self._episode[0] += accepted
            self._episode[1] += throttled
        if accepted:
            self._accepted(now, started, accepted, latency, in_flight)
        if throttled:
            self._refused(now, started, throttled, retry_after)

    def _accepted(
        self, now: float, started: float, calls: int, latency: float, in_flight: int
    ) -> None:
        self._delivered += calls
        had_latency = self._latency.latency
        self._latency.accepted(now, calls, latency, in_flight, started)
        if started >= self._reacted:
            self._streak = 0
            if self._pause is not None:
                self._end_pause(now)  # a trickle call got through: the limit lifted
        pending = self._pending
        if not had_latency and pending is not None:  # the first round trip is known now
            # (counted from when the refusal came back, as if it had been known then)
            settle = max(now, self._settle_time(self._reacted, pending[1]))
            self._pending = (settle, *pending[1:])

    def _refused(self, now: float, started: float, calls: int, retry_after: float | None) -> None:
        self.throttled += calls
        self._latency.refused()
        if self._cap_refusal(now, started):
            return
        if started < self._reacted:
            return  # an answer to a call started before the last cut
        self._streak += calls
        if not self._first_refusal and self._streak >= LOCKOUT and self._locked_out(now):
            self._lockout(now, retry_after)
        elif self._pending is None and (
            self._first_refusal or self._climbing or sum(self._episode) >= MIN_EPISODE
        ):
            self._cut(now, started)

    def _cap_refusal(self, now: float, started: float) -> bool:
        """Was the refusal the cap's (the server caps the calls in progress)? It cuts it.

        The first episode's refusals give the cap: the fewest calls still out
        when one came back. A single client's calls in progress at the server
        are also out at the client, so a server that caps them at C refuses
        only while C or more are out: a cap there holds them under its limit
        whatever the rate (and the rate, no longer cut for them, probes up
        harmlessly). A refusal while the cap binds (``cap - 1`` others out)
        takes one off it, at most once per round trip; ``HOLD`` seconds later
        it grows by one if it binds. A refusal with fewer out, or a cap under
        ``MIN_CAP``, is a rate's: the cap goes, and the rate takes it from there.
        """
        if self._cap_learning is not None:
            self._cap_learning = min(self._cap_learning, self._in_flight)
            return False
        if self._cap >= self.workers:
            return False
        if self._in_flight >= self._cap - 1 and self._cap > MIN_CAP:
            if started >= self._cap_cut:
                self._cap = max(MIN_CAP, min(self._cap - 1, self._in_flight))
                self._cap_cut = now
                self._cap_raise = now + HOLD
            return True
        self._cap, self._cap_raise, self._cap_bound = self.workers, math.inf, False
        return False

    def ending(self) -> None:
        """No more input: only the calls in flight and the retries are left."""
        self._ending = True
        self._latency.input_ended = True

    def due(self, now: float, waiting: int = 0) -> float | None:
        """Apply the timed changes; seconds until the next one (None: none planned).

        ``waiting``: batches sent whose calls have not all started yet.
        """
        self._clock = now
        wake = self._latency.tick(now, waiting)
        if now >= self._cap_raise:
            if self._in_flight >= self._cap - 1:  # (it binds: try one more)
                self._cap = min(self._cap + 1, self.workers)
            self._cap_raise = now + HOLD if self._cap < self.workers else math.inf
        if self._cap_raise < math.inf:
            wake = sooner(wake, self._cap_raise - now)
        if self._pause is not None and now >= self._pause[0]:
            self._end_pause(now)
        if self._pending is not None:
            when, started, rate, since = self._pending
            if now < when:
                return sooner(wake, when - now if when < math.inf else None)
            self._pending = None
            self._settle(now, started, rate, since)
        if self._pause is not None:
            return sooner(wake, self._pause[0] - now)
        if self.limiter is None or self._next_step == math.inf:
            return wake
        if now >= self._next_step:
            if self._ending and not self._climbing:
                self._next_step = math.inf
                return wake
            self._step(now)
        return sooner(wake, self._next_step - now)


def sooner(a: float | None, b: float | None) -> float | None:
    """The nearer of two waits, None meaning "no wait due"."""
    if a is None:
        return b
    return a if b is None else min(a, b)
